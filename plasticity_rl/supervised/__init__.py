"""Supervised continual learning: datasets, task streams and the trainer built on them."""
