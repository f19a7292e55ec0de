"""The pipeline's stages, each artifact in, artifact out: zeroshot, features, sae, finetune,
evaluate, report."""
