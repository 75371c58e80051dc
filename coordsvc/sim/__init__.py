"""Deterministic simulation (used by tests/sim and `make sim`).

``nodes.py`` runs whole production nodes (``Service`` on a memory store, driven as the
runtime drives it) with simulated clients and checks what the clients saw; ``cluster.py``
runs bare replicas with opaque commands. Both share ``world.py`` (time, RNG, network,
faults) and ``oracle.py`` (per-slot agreement). The history checkers (``linearizability``,
``checks``) are shared with the real-process fault suite in tests/faults.
"""
