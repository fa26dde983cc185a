"""distar: Diff-Instruct* (DI*) for one-step text-to-image generators.

Math lives in :mod:`distar.diffusion` and :mod:`distar.objectives` (pure torch); models, rewards,
training, evaluation and the embedded worlds build on it. Each package imports only the ones below
it in the README's layout, down to the foundation: ``config``, ``errors``, ``io`` and ``runtime``.
"""

__version__ = "0.1.0"
