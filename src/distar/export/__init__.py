"""Export: a training checkpoint as a plain diffusers pipeline (or LoRA) folder, ready for the Hub.

- :mod:`~distar.export.pipeline` — checkpoint → one/few-step diffusers pipeline, ``distar.json``,
  and sampling from an exported folder or a checkpoint (``load_generator``, ``generator_images``)
- :mod:`~distar.export.card` — the folder's Hub model card, licence, validation and upload
"""
