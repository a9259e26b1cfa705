"""Helpers for testing code that uses mqkit, and the importable conformance suite.

The suite imports pytest, so it is loaded only by ``mqkit.testing.conformance``.
"""
