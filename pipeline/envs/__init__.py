"""Dialogue environments, simulated users and the built-in chat and memory tasks."""
