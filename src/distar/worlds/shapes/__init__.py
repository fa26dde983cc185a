"""The "shapes" world: a small text-to-image world whose every model distar trains itself.

Prompts from a compositional grammar (:mod:`.grammar`) are rendered procedurally as 32×32 images
(:mod:`.render`); a hidden "true human utility" (:mod:`.utility`) judges images and makes simulated
Bradley–Terry choices. ``distar world build shapes`` (:mod:`.build`) trains, from scratch, a CLIP
analogue, a PickScore analogue on the simulated choices and a pixel-space diffusers reference with
CFG; they ship under ``models/`` (:mod:`.assets`). ``distar demo --world shapes`` (:mod:`.demo`)
trains DI* and its baselines from the reference through the project's trainer and measures learned
reward against true utility — whether a reward gain is a preference gain or reward hacking.
"""
