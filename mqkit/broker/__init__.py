"""The native broker: queue engine, storage, server and client."""
