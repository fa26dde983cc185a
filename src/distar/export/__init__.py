"""Export: checkpoint → diffusers pipeline (or LoRA) folder and its Hub model card.

- :mod:`~distar.export.pipeline` — checkpoint → one/few-step diffusers pipeline, ``distar.json``,
  and sampling from an exported folder or a checkpoint (``load_generator``, ``generator_images``)
- :mod:`~distar.export.card` — the folder's Hub model card, licence, validation and upload
"""
