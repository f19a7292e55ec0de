"""Fine-tuning: the optimizer, the jit-compiled SAE-FT train step and (to come) the train loop."""
