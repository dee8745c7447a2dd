"""Checkpoint Registry: store, inspect, verify and serve model checkpoints."""

__version__ = "0.1.0"
