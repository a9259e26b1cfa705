"""Backends that ship in core: the in-memory broker and the native broker."""
