"""Ray Tune sweeps: the ``tune:`` config section, the search space, and ``rayppo sweep``, where
each trial is a whole distributed run (docs/sweeps.md)."""
