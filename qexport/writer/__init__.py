"""Stage 4: packing integers into words, rendering templates, the atomic writer, the manifest."""
