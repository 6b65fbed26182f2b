"""Training: TrainState, the jitted train step, checkpoints and the host loop."""
