"""saeft-jax: SAE-FT (robust CLIP fine-tuning with a sparse-autoencoder regularizer) in JAX/Flax."""

__version__ = "0.1.0"
