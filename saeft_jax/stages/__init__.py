"""The pipeline's stages, each artifact in, artifact out, in modules named for what they produce:
heads (stage zeroshot), features, trained_sae (sae), finetuned (finetune), scores (evaluate), report."""
