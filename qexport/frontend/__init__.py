"""Stage 1: checkpoints, models, inputs and the one forward pass that captures every conv."""
