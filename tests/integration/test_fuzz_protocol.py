"""A client-protocol fuzzer against a live node process (issue 11).

Hypothesis draws well-framed requests -- real and made-up ops, known and unknown fields,
values of every msgpack type and of many sizes (huge ints, NULs, 1 MiB blobs, nested
maps), write commands with fields of the wrong type or range, and frames above the cap --
and sends each to a real node over ZeroMQ. The rules: every request gets a reply carrying
its id (parked ones by their deadline), the node stays up, its RSS stays bounded.

The seed is printed (``FUZZ_SEED=<n>`` replays it); ``FUZZ_EXAMPLES`` sets the count.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

from coordsvc import wire
from coordsvc.clusterfile import Cluster
from coordsvc.transport.zmq_transport import MAX_ROUTER_MESSAGE_BYTES

from .harness import LocalCluster, socket_to

pytestmark = pytest.mark.timeout(900)

SEED = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
OPS = ["write", "keepalive", "get", "list", "history", "watch", "lock_wait", "locks", "status",
       "snapshot_save", "snapshot_chunk"]
FIELDS = ["key", "prefix", "prefixes", "stale", "after", "wait_ms", "limit", "cursor", "offset",
          "start_after", "name", "session_id", "req", "export_id"]
PARKING = {"watch", "lock_wait"}
RSS_GROWTH_MAX_MB = 300
REPLY_S = 3.0        # for a request that cannot park
PARK_S = 35.0        # the longest wait_ms a node honours is 30 s

_ints = st.one_of(st.integers(-2**63, 2**64 - 1), st.integers(-3, 70),
                  st.sampled_from([0, 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -2**63]))
_text = st.one_of(st.text(max_size=40), st.sampled_from(["", "a/", "k\x00", "k" * 513, "é" * 300,
                                                         "p" * 100 * 1024]))
class Big(bytes):
    """A large value that Hypothesis shows by its size, not its 1 MiB of content."""

    def __repr__(self) -> str:
        return f"Big({len(self)} bytes)"


_blobs = st.one_of(st.binary(max_size=256),
                   st.sampled_from([Big(b"x" * 65536), Big(b"y" * (1 << 20))]))
_scalars = st.one_of(st.none(), st.booleans(), _ints, st.floats(), _text, _blobs)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
# A write's command, by tag (see core.commands), with fields of any type or range.
_commands = st.builds(lambda tag, fields: [tag, *fields], st.integers(-1, 11),
                      st.lists(_scalars, max_size=5))
_writes = st.builds(
    lambda cid, seq, first, cmd: msgpack.packb([cid, seq, first, cmd], use_bin_type=True),
    st.one_of(st.text(max_size=70), _scalars), _ints, _ints, _commands)
_junk = st.builds(
    lambda op, fields, req: {"op": op, **fields, **({"req": req} if req is not None else {})},
    st.one_of(st.sampled_from(OPS), _text, _ints),
    st.dictionaries(st.sampled_from(FIELDS), _values, max_size=6),
    st.one_of(st.none(), _writes))

# Requests that fit the schema, so that the handlers (not only the decoder) are exercised.
_keys = st.text(alphabet="ab/é", min_size=1, max_size=12)
_small = st.integers(0, 40)
_waits = st.one_of(st.integers(0, 300), st.just(2**63 - 1))
_good_commands = st.one_of(
    st.builds(lambda k, v: [1, k, v, None, None], _keys, _blobs),                 # put
    st.builds(lambda k, r: [2, k, r, None], _keys, st.one_of(st.none(), _small)),  # delete
    st.builds(lambda n, t: [9, n, t, True], _keys, st.integers(1000, 3000)),      # open+acquire
    st.builds(lambda sid: [4, sid], st.integers(1, 30)),                          # close
    st.builds(lambda n, sid: [8, n, sid], _keys, st.integers(1, 30)),             # cancel
)
_good_writes = st.builds(lambda cid, seq, cmd: msgpack.packb([cid, seq, seq, cmd], use_bin_type=True),
                         st.sampled_from(["fuzz-a", "fuzz-b"]), st.integers(1, 10**6), _good_commands)
_good = st.one_of(
    st.builds(lambda k, s: {"op": "get", "key": k, "stale": s}, _keys, st.booleans()),
    st.builds(lambda p, lim, sa: {"op": "list", "prefix": p, "limit": lim, "start_after": sa},
              st.one_of(st.just(""), _keys), _small, st.one_of(st.just(""), _keys)),
    st.builds(lambda c, o: {"op": "list", "cursor": c, "offset": o}, _small, _small),
    st.builds(lambda k, c, o: {"op": "history", "key": k, "cursor": c, "offset": o},
              _keys, _small, _small),
    st.builds(lambda ps, a, w, lim: {"op": "watch", "prefixes": ps, "after": a, "wait_ms": w,
                                     "limit": lim},
              st.lists(_keys, max_size=5), _small, _waits, st.integers(-5, 2000)),
    st.builds(lambda n, sid, w: {"op": "lock_wait", "name": n, "session_id": sid, "wait_ms": w},
              _keys, st.integers(0, 30), _waits),
    st.builds(lambda sid: {"op": "keepalive", "session_id": sid}, st.integers(0, 30)),
    st.builds(lambda r: {"op": "write", "req": r}, _good_writes),
    st.just({"op": "locks"}), st.just({"op": "status"}),
    # Backups: a save pins the state (at most MAX_EXPORTS at once, then busy); chunks at
    # any offset of any export, open or not.
    st.just({"op": "snapshot_save"}),
    st.builds(lambda e, o: {"op": "snapshot_chunk", "export_id": e, "offset": o},
              st.integers(0, 6), st.one_of(_small, st.sampled_from([1 << 20, 2**63 - 1]))),
)
_requests = st.one_of(_good, _junk)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Speaker:
    """One DEALER to the node; requests numbered, replies collected by id."""

    def __init__(self, cluster: Cluster, address: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # With the admin key: the fuzzing is of what an authenticated client may send.
        self.sock = socket_to(self.ctx, zmq.DEALER, cluster, address)
        self.sock.connect(address)
        self.next_id = 0
        self.replies: dict[int, dict[str, Any]] = {}
        self.parked: dict[int, dict[str, Any]] = {}    # may answer only at their deadline

    def send(self, body_of: Any) -> int:
        self.next_id += 1
        self.sock.send(body_of(self.next_id))
        return self.next_id

    def wait(self, rid: int, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while rid not in self.replies and (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                r = wire.decode_client(self.sock.recv(), wire.CLIENT_REPLY)
                assert type(r.get("id")) is int and r["id"] in range(1, self.next_id + 1), r
                self.replies[r["id"]] = r
        return self.replies.get(rid)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Speaker]]:
    c = LocalCluster(tmp_path_factory.mktemp("fuzz"), nodes=1)
    c.start()
    speaker = Speaker(c.cluster, c.cluster.node("n1").address)
    try:
        c.leader()
        yield c, speaker
    finally:
        speaker.close()
        c.close()


def _encode(req: dict[str, Any]) -> Any:
    def body(rid: int) -> bytes:
        try:
            return wire.encode_client(wire.CLIENT_REQUEST, {**req, "id": rid})
        except Exception:   # over the cap: the node must answer it anyway
            return bytes((wire.WIRE_VERSION, wire.CLIENT_REQUEST)) + msgpack.packb(
                {**req, "id": rid}, use_bin_type=True)
    return body


def _fuzz(live: tuple[LocalCluster, Speaker], examples: int) -> None:
    c, speaker = live
    pid = c.procs["n1"].pid
    print(f"protocol fuzz seed {SEED} ({examples} examples; FUZZ_SEED={SEED} replays it)")
    rss_before = _rss_mb(pid)

    @seed(SEED)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example, HealthCheck.filter_too_much])
    @given(req=_requests, oversize=st.integers(0, 99))
    def one(req: dict[str, Any], oversize: int) -> None:
        if oversize == 0:    # about 1 in 100: a frame between the cap and twice the cap
            req = {**req, "pad": Big(b"z" * (wire.MAX_FRAME_BYTES + 1024))}
        # Above MAX_ROUTER_MESSAGE_BYTES ZeroMQ drops the connection before the node sees
        # a byte (documented); such a request has no reply to check.
        assume(len(_encode(req)(2**40)) <= MAX_ROUTER_MESSAGE_BYTES)
        rid = speaker.send(_encode(req))
        # A request that may park is checked at the end (all of them wait at once).
        reply = speaker.wait(rid, 0.3 if req.get("op") in PARKING else REPLY_S)
        if reply is None:
            assert req.get("op") in PARKING, f"seed {SEED}: no reply to {str(req)[:300]}"
            speaker.parked[rid] = req
        assert c.procs["n1"].poll() is None, f"seed {SEED}: the node exited on {str(req)[:300]}"

    one()
    for rid, req in speaker.parked.items():
        assert speaker.wait(rid, PARK_S) is not None, f"seed {SEED}: parked {str(req)[:300]} never answered"
    assert c.procs["n1"].poll() is None
    status = c.probe.status("n1")
    assert status is not None and status["role"] == "leader"
    rss_after = _rss_mb(pid)
    print(f"node RSS {rss_before:.0f} -> {rss_after:.0f} MiB; internal errors "
          f"{status['internal_errors']}, bad frames {status['bad_frames']}")
    assert rss_after < rss_before + RSS_GROWTH_MAX_MB, f"seed {SEED}: RSS {rss_before} -> {rss_after}"
    assert status["internal_errors"] == 0, f"seed {SEED}: see {c.root}/n1.log"


def test_every_fuzzed_request_gets_a_reply_and_the_node_stays_up_with_bounded_rss(
        live: tuple[LocalCluster, Speaker]) -> None:
    _fuzz(live, EXAMPLES)


@pytest.mark.long
def test_ten_thousand_fuzzed_requests(live: tuple[LocalCluster, Speaker]) -> None:
    _fuzz(live, 10_000)
