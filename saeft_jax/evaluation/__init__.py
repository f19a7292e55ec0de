"""Evaluation: metrics, sharded inference over suites, WiSE-FT sweeps, and the analyses of what changed."""
