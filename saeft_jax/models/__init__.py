"""Models: the CLIP towers and the classification head (no data, no training; the SAE is in `saeft_jax.sae`)."""
