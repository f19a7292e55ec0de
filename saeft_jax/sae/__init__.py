"""The Top-K sparse autoencoder: formulas (`model`), trainer (`training`), quality metrics
(`quality`), the trained SAE as one value (`frozen.FrozenSAE`) and its files (`artifact`)."""
