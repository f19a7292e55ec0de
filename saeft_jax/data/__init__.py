"""Data: preprocessing, sources, input pipelines and the dataset registry (no models, no training)."""
