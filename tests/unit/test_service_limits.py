"""The service's side of the byte bounds: a write that could not travel in one Accept."""
from __future__ import annotations

import random

from coordsvc.core.commands import Put, Request, encode_request
from coordsvc.core.service import Service
from coordsvc.core.types import MAX_COMMAND_BYTES, Durable


def test_a_write_larger_than_one_command_can_be_is_a_bad_request_not_a_proposal() -> None:
    svc = Service("n1", {"n1": "tcp://127.0.0.1:1"}, Durable(), random.Random(1), 0)
    raw = encode_request(Request("c", 1, 1, Put("k", b"v" * MAX_COMMAND_BYTES)))
    svc.on_client("route", {"id": 1, "op": "write", "req": raw}, 0)
    replies, _ = svc.take_outbox()
    assert replies == [("route", {"id": 1, "ok": False, "error": "bad_request",
                                  "message": f"write request of {len(raw)} bytes exceeds "
                                             f"{MAX_COMMAND_BYTES}"})]
    assert svc.status()["pending_writes"] == 0
