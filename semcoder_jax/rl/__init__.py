"""Reinforcement learning with execution rewards (GRPO family)."""
