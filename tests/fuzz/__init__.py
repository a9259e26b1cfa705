"""Fuzzing of the broker server: a standalone script and its helpers."""
