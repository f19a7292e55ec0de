"""Evaluation: metrics, sharded inference over suites, WiSE-FT sweeps and the interpretability of change."""
