"""Models Pitcrew runs itself (on the CPU) to check and export converted checkpoints."""
