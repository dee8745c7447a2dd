"""Stored checkpoints made usable in this process: their folders linked from the blob store and
their models loaded, for the worker's checks and the generation cache alike."""
