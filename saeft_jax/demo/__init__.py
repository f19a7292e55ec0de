"""The embedded demo: handwritten digits in several styles and a small CLIP pretrained on them,
so the whole pipeline runs end to end with no download."""
