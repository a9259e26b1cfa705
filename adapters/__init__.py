"""Adapters for external brokers, installed as ``mqkit.adapters``.

Each module imports its driver lazily-safe: importing the module without the
driver raises ModuleNotFoundError naming the driver, which the registry turns
into an install hint.
"""
