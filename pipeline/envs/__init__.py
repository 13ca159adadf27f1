"""Dialogue environments and simulated users: the world the policy acts in (no engines inside:
the LLM user's engine is :mod:`rollout_workers.user_model`, started by the controller)."""
