"""Sharded training: config (YAML + overrides), optimizer, pure step, checkpoints, the run loop."""
