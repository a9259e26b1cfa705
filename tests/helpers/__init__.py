"""Helpers shared by the test suites (fake modules, crash simulation)."""
