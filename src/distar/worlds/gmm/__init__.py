"""The gmm world: per-prompt Gaussian-mixture references with exact scores at every noise level.

Its reference is known exactly, so reward, mode coverage and distances to the reference and to the
KL-optimal tilted target are measured, not estimated: the setting in which to compare score-based
(DI*, SIM) and KL-based (Diff-Instruct, DI++) regularisation. ``distar demo --world gmm`` runs it.
"""

from distar.worlds.gmm.backend import GMMBackend
from distar.worlds.gmm.metrics import SampleMetrics, energy_distance, evaluate_samples, tilted_samples
from distar.worlds.gmm.models import GMMNetConfig
from distar.worlds.gmm.reward import GMMBumpReward
from distar.worlds.gmm.world import GMMWorld, GMMWorldConfig

__all__ = [
    "GMMBackend",
    "GMMBumpReward",
    "GMMNetConfig",
    "GMMWorld",
    "GMMWorldConfig",
    "SampleMetrics",
    "energy_distance",
    "evaluate_samples",
    "tilted_samples",
]
