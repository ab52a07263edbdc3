"""Training: the loop and its augmentation, the optimizers, a run and its folder (time budget, saving and resuming),
and the compute a recipe costs."""
