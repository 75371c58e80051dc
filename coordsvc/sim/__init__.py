"""Deterministic simulation of a cluster of pure replicas (used by tests/sim and `make sim`)."""
