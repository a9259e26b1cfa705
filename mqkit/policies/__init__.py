"""Reliability policies, each written once above the adapter interface."""
