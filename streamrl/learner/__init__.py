"""Continual-learning worker."""
