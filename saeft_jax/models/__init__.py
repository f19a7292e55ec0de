"""Models: the CLIP towers, the sparse autoencoder and the classification head (no data, no training)."""
