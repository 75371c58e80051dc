"""The node's log: one line per important event, as text for people or JSON for machines.

Every line carries the time, the level, the node and an ``event`` name (``election``,
``step_down``, ``leader``, ``snapshot``, ``slow_fsync``, ``key_rejected``, ``stop``, ...);
JSON lines add the event's fields as keys, so a log pipeline can alert on
``event == "slow_fsync"`` without parsing sentences. Lines from other loggers (the
transport, pyzmq's ZAP handler) get ``event = "log"``.

Text::

    2026-11-28T21:40:01.123Z n1 INFO election: campaigning at ballot [4, n1]: no leader heard for 912 ms (ballot=[4, "n1"] ...)

JSON (one object per line)::

    {"time": "2026-11-28T21:40:01.123Z", "level": "info", "node": "n1", "event": "election",
     "msg": "campaigning at ballot [4, n1]: ...", "ballot": [4, "n1"], "reason": "..."}
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

__all__ = ["FORMATS", "LEVELS", "event", "setup"]

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
_RESERVED = frozenset(("time", "level", "node", "event", "msg"))


def event(logger: logging.Logger, level: int, name: str, msg: str, /, **fields: Any) -> None:
    """Log ``msg`` as event ``name`` with structured ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"event": name, "fields": fields})


def _time(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class _Text(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "event", None)
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        line = f"{_time(record)} {self.node} {record.levelname}"
        line += f" {name}: {record.getMessage()}" if name else f" {record.getMessage()}"
        if fields:
            line += " (" + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items()) + ")"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _Json(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": _time(record), "level": record.levelname.lower(),
                               "node": self.node, "event": getattr(record, "event", None) or "log",
                               "msg": record.getMessage()}
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        for k, v in fields.items():
            doc[k if k not in _RESERVED else f"field_{k}"] = v
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def setup(node: str, level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every ``coordsvc`` log line to ``stream`` (stderr) at ``level`` in ``fmt``."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Json(node) if fmt == "json" else _Text(node))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
