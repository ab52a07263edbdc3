"""The top layer: workflows that read checkpoints and data, compute, and write a run folder's results (evaluation,
calibration, the main job and its gallery). They return result objects; nothing below imports them."""
