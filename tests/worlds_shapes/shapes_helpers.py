"""Settings shared by the shapes-world tests."""

#: settings of a build small enough for a test (every stage runs, a few steps each)
TINY_BUILD = [
    "clip.steps=2", "clip.batch_size=8", "judge.steps=2", "judge.batch_size=8",
    "reward.steps=2", "reward.batch_size=4", "reader.steps=2", "reader.batch_size=4",
    "reference.steps=2", "reference.batch_size=4",
    "one_step.steps=2", "one_step.batch_size=2", "one_step.samples=4",
    "one_step_refine.steps=2", "one_step_refine.batch_size=2", "reference.checkpoint_every=1",
    "quality.fid_images=8", "quality.sample_steps=2", "quality.held_out_pairs=16", "quality.judge_images=16",
    "threads=1",
]
