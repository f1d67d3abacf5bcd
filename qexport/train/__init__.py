"""Seed 003's training loop as a command, with course-format checkpoints and curves."""
