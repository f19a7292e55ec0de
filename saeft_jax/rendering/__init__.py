"""Rendering: the report as Markdown and the PNG figures (no computation of results)."""
