"""Tiny random stand-ins for hub assets: pipelines, reward models, Inception, tokenizers. Built
locally, for tests and offline trials.

- :mod:`~distar.testing.pipelines` — diffusers SD / SDXL / SD3 / FLUX / SANA pipelines (``pretrained: tiny:<name>``)
- :mod:`~distar.testing.reward_models` — every reward model in its published file layout (``path: tiny``)
- :mod:`~distar.testing.inception` — the FID Inception torchscript (``--metric-path fid=tiny``)
- :mod:`~distar.testing.tokenizers` — CLIP, T5 and Gemma tokenizers over tiny vocabularies

Each loads through the same code as the real asset. This package sits above the packages whose
assets it builds (it may import backends, rewards and eval); they reach it only by name, through
:func:`distar.io.tiny_asset`, when a config names a ``tiny`` asset.
"""
