"""The mixed-precision study (seed 000): evaluation, sensitivity, greedy and budget search."""
