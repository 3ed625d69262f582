"""plasticity-rl: a testbed for loss of plasticity and catastrophic forgetting."""

__version__ = "0.1.0"
