"""Embedded worlds: small, self-contained settings in which distar's whole method family runs offline.

- :mod:`distar.worlds.gmm`: prompts are discrete conditions, each with a Gaussian-mixture reference in
  R^d whose scores are known exactly, so diversity, reward and distance to the reference are measured
  rather than estimated by learned metrics (``distar demo --world gmm``).
- :mod:`distar.worlds.shapes`: a small text-to-image world with models trained by distar itself.

Each world provides a ``demo`` module with ``run(args) -> int``, dispatched by ``distar demo``.
"""
