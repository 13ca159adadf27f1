"""The learning guards share one Ray session with the integration tests (``ray_session``)."""

from tests.integration.conftest import ray_session, tiny_config  # noqa: F401 - shared fixtures
