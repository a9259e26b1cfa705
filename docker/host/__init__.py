"""Host runner for mqkit's test brokers (used by docker/brokers). Standard library only."""
