"""Deployable models: the export stage (merge, card, GGUF, hub)."""
