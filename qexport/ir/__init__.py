"""Stage 2: the integer layer (w_int, x_int) and its exact reference psums and checks."""
