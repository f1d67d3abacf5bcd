"""Reading sets back: decode, compare a simulator's output, check committed sets, testbenches."""
