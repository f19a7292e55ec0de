"""The pipeline's stages, each artifact in, artifact out, one module per stage and named for it:
zeroshot, features, sae, probe, finetune, evaluate, report (completion and context serve them all)."""
