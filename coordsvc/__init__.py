"""coordsvc: locks and configuration, agreed by multi-Paxos over ZeroMQ, durable in SQLite."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
