"""The driver's parts: Ray setup, placement, pre-flight, episodes (single- and multi-turn
behind one interface), advantages, weight sync, in-flight batches, recovery, monitors."""
