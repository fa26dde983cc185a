"""The "shapes" world: a small text-to-image world whose every model distar trains itself.

Prompts from a compositional grammar (:mod:`.grammar`) are rendered procedurally as 32×32 images
(:mod:`.render`); a hidden "true human utility" (:mod:`.utility`) judges images and makes simulated
Bradley–Terry choices. ``distar world build shapes`` (:mod:`.build`) trains, from scratch, a CLIP
analogue, a PickScore analogue on the simulated choices and a pixel-space diffusers reference with
CFG; they ship under ``models/`` (:mod:`.assets`). ``distar demo --world shapes`` (:mod:`.demo`)
trains DI* and its baselines from the reference through the project's trainer and measures learned
reward against true utility — whether a reward gain is a preference gain or reward hacking.
"""

from distar.worlds.shapes.grammar import Spec, parse_prompt, sample_prompts, sample_spec, vocabulary
from distar.worlds.shapes.render import Scene, render
from distar.worlds.shapes.utility import TrueUtility, UtilityWeights, choice_probability, simulate_choices

__all__ = [
    "Spec",
    "Scene",
    "TrueUtility",
    "UtilityWeights",
    "choice_probability",
    "parse_prompt",
    "render",
    "sample_prompts",
    "sample_spec",
    "simulate_choices",
    "vocabulary",
]
