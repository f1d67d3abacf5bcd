"""Stage 3: profiles and the arrangements of a layer's integers into files (flat, tiled)."""
