"""Helpers shared by the test suites (certificates, ...); imported as `tests.support.*`."""
