"""The process that owns the device: claims jobs, loads models, runs checks."""
