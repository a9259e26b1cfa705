"""Shared test wiring: broker environments (docker/brokers) and the Redis fixture."""

pytest_plugins = ["tests.brokers_plugin", "tests.redis_server"]
