"""The course's quantized layer and the model families built from it."""
