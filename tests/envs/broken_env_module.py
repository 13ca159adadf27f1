"""A module whose import fails, as a user's environment module might."""

raise RuntimeError("this environment module is broken")
