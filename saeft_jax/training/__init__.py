"""Fine-tuning: the optimizer, the jit-compiled SAE-FT train step and the linear train loop."""
