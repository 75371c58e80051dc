"""Bytes <-> messages: versioned, size-capped msgpack bodies.

A body is one version byte, one type-tag byte, then a msgpack payload. Peer messages
(tags 1..14, in ``MESSAGE_TYPES`` order) are positional arrays; client requests, client
replies and watch events are msgpack maps with str keys.

Decoding is the trust boundary: whatever a peer or client sends, ``decode*`` either
returns a fully type-checked value or raises ``WireError`` -- never anything else --
so the node can drop and count a bad frame instead of crashing.

Bounds checked on every decoded peer field (the limits live in ``core.types``):

- every frame, of any type: at most ``MAX_FRAME_BYTES`` (4 MiB), checked before msgpack
  sees a byte. Senders pack within ``MESSAGE_BUDGET_BYTES`` (2 MiB) plus one item and
  send snapshots in ``SNAPSHOT_CHUNK_BYTES`` (1 MiB) chunks, so no honest frame is near it;
- ballot rounds, slots, commit indexes, heartbeat rounds: ints in ``[0, 2**62]``
  (``MAX_ROUND``/``MAX_SLOT``), so ``x + 1`` always fits SQLite's int64; log slots >= 1;
- node ids (``src``, a ballot's node): str of 1..64 characters (``MAX_NODE_ID_CHARS``);
  a ballot's node may be empty only in the zero ballot ``[0, ""]``;
- a value (batch of commands): at most ``MAX_BATCH_COMMANDS`` (65,536) bin items;
- a promise's entries and a catch-up reply's chosen entries: at most ``MAX_MESSAGE_ITEMS``
  (65,536); a heartbeat's renewed session ids: at most ``MAX_RENEWED`` (4,096) ints in
  ``[1, 2**63 - 1]``;
- a catch-up request: ``1 <= from_slot <= to_slot <= 2**62``;
- a vote's (Promise, Accepted, HeartbeatAck) incarnation: an int in ``[0, 2**62]``;
- a configuration (CatchupReply.config): at most 64 members, ids as above, sorted and
  unique, incarnations in ``[0, 2**62]``, addresses and keys str of at most 512 chars;
- a snapshot descriptor: index in ``[1, 2**62]``, size in ``[0, 2**62]``, a 32-byte
  sha256; a snapshot chunk: at most ``SNAPSHOT_CHUNK_BYTES`` of data lying inside the
  snapshot; a snapshot request: offset in ``[0, 2**62]``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from coordsvc.core.membership import MAX_FIELD_CHARS, MAX_MEMBERS, Member, Membership
from coordsvc.core.messages import (
    CHECKSUM_BYTES,
    ENVELOPE_BYTES,
    MESSAGE_TYPES,
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    SnapshotChunk,
    SnapshotInfo,
    SnapshotRequest,
    TimeoutNow,
)
from coordsvc.core.types import (
    MAX_BATCH_COMMANDS,
    MAX_COMMAND_BYTES,
    MAX_MESSAGE_ITEMS,
    MAX_NODE_ID_CHARS,
    MAX_RENEWED,
    MAX_ROUND,
    MAX_SLOT,
    MAX_SNAPSHOT_BYTES,
    MESSAGE_BUDGET_BYTES,
    SNAPSHOT_CHUNK_BYTES,
    Ballot,
    LogEntry,
    ProtocolError,
    UsageError,
    Value,
)

__all__ = [
    "CLIENT_REPLY",
    "CLIENT_REQUEST",
    "CLIENT_TAGS",
    "EVENT",
    "MAX_FRAME_BYTES",
    "MESSAGE_BUDGET_BYTES",
    "PEER_TAGS",
    "SNAPSHOT_CHUNK_BYTES",
    "WIRE_VERSION",
    "WireError",
    "decode",
    "decode_client",
    "decode_peer",
    "encode_client",
    "encode_peer",
    "oversize_request_id",
]

WIRE_VERSION: Final = 1
# No frame of any type is larger. Values are capped at 1 MiB; senders pack items within
# MESSAGE_BUDGET_BYTES (always at least one) and send snapshots in chunks, so the largest
# honest peer frame is one budget or one batch, plus its envelope:
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
if max(MESSAGE_BUDGET_BYTES, MAX_COMMAND_BYTES + 16, SNAPSHOT_CHUNK_BYTES) + 4 * ENVELOPE_BYTES \
        >= MAX_FRAME_BYTES:
    raise ImportError("wire: a budget plus its largest item no longer fits the frame cap")

CLIENT_REQUEST: Final = 32
CLIENT_REPLY: Final = 33
EVENT: Final = 34
CLIENT_TAGS: Final = frozenset({CLIENT_REQUEST, CLIENT_REPLY, EVENT})

_HEADER_BYTES = 2
# Below this, copying the payload out of the body is cheaper than a memoryview.
_COPY_LIMIT = 64 * 1024


class WireError(ProtocolError):
    """A frame that fails to decode or validate (the sender misbehaved)."""


# --- msgpack seam ---------------------------------------------------------------------

_packb: Callable[..., bytes] = msgpack.packb
_unpackb: Callable[..., object] = msgpack.unpackb

if getattr(msgpack.Packer, "__module__", "") == "msgpack._cmsgpack":
    # The C Packer packs str/int/bytes/tuple without running Python code, so it holds
    # the GIL for the whole call and resets its buffer on error: sharing one instance
    # is safe and saves re-creating a Packer (~0.7 us) per message.
    _pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack
else:  # pure-Python fallback: its Packer is not atomic, so build one per call
    def _pack(obj: object) -> bytes:
        return _packb(obj, use_bin_type=True)

# Limits: unpackb bounds every str/bin/array/map length by the length of the buffer it
# is given (which _check_frame has already capped at MAX_FRAME_BYTES), so a lying length
# header fails fast. Passing those limits explicitly is no stricter and, measured, makes
# each call ~1.3 us slower, so only ext types (timestamps included) are turned off here.
_UNPACK_OPTS: Final[dict[str, Any]] = {"raw": False, "strict_map_key": True, "max_ext_len": 0}


def _check_frame(body: bytes) -> tuple[int, object]:
    """Check the header and cap, unpack the payload; return ``(tag, payload)``."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise UsageError(f"body must be bytes, got {type(body).__name__}")
    n = len(body)
    # Checked before msgpack ever sees the payload.
    if n > MAX_FRAME_BYTES:
        raise WireError(f"frame too large ({n} > {MAX_FRAME_BYTES} bytes)")
    if n < _HEADER_BYTES + 1:
        raise WireError("truncated frame")
    if body[0] != WIRE_VERSION:
        raise WireError(f"unsupported wire version {body[0]}")
    tag = body[1]
    if tag in _PEER_DECODERS:
        use_list = False  # arrays come back as tuples, which is what Value and co. are
    elif tag in CLIENT_TAGS:
        use_list = True
    else:
        raise WireError(f"unknown type tag {tag}")
    raw = body[_HEADER_BYTES:] if n <= _COPY_LIMIT else memoryview(body)[_HEADER_BYTES:]
    try:
        payload = _unpackb(raw, use_list=use_list, **_UNPACK_OPTS)
    except Exception as e:  # msgpack raises a zoo of ValueError/UnpackException kinds
        raise WireError(f"bad msgpack: {type(e).__name__}") from e
    return tag, payload


# --- field validators (decode side) --------------------------------------------------
# Types are checked with ``type(v) is int`` so a bool is never taken for an int.

def _node(v: object, what: str) -> str:
    if type(v) is str and 0 < len(v) <= MAX_NODE_ID_CHARS:
        return v
    raise WireError(f"{what}: want a node id (str of 1..{MAX_NODE_ID_CHARS} characters)")


def _uint(v: object, what: str) -> int:
    """A slot, commit index or round: an int in [0, 2**62]."""
    if type(v) is int and 0 <= v <= MAX_SLOT:
        return v
    raise WireError(f"{what}: want int in [0, 2**62]")


def _log_slot(v: object, what: str) -> int:
    # Slot 0 is reserved (see Accept), so no real log entry ever lives there.
    if type(v) is int and 1 <= v <= MAX_SLOT:
        return v
    raise WireError(f"{what}: want int in [1, 2**62]")


def _size(v: object, what: str) -> int:
    if type(v) is int and 0 <= v <= MAX_SNAPSHOT_BYTES:
        return v
    raise WireError(f"{what}: want int in [0, 2**62]")


# Nearly every message carries the current leader's ballot, and building a frozen
# dataclass costs ~1 us, so decoded ballots are interned. Bounded: a peer spraying
# distinct ballots only makes us start over.
_BALLOT_CACHE: dict[tuple[int, str], Ballot] = {}
_BALLOT_CACHE_MAX = 1024


def _ballot(v: object, what: str) -> Ballot:
    if type(v) is tuple and len(v) == 2:
        rnd, node = v
        # Types are checked before the lookup: (True, "n") would hash equal to (1, "n").
        # Only the zero ballot has no node.
        if (type(rnd) is int and 0 <= rnd <= MAX_ROUND and type(node) is str
                and len(node) <= MAX_NODE_ID_CHARS and (node or rnd == 0)):
            key = (rnd, node)
            b = _BALLOT_CACHE.get(key)
            if b is None:
                if len(_BALLOT_CACHE) >= _BALLOT_CACHE_MAX:
                    _BALLOT_CACHE.clear()
                b = _BALLOT_CACHE[key] = Ballot(rnd, node)
            return b
    raise WireError(f"{what}: want [round in [0, 2**62], node id]")


def _value(v: object, what: str) -> Value:
    if type(v) is tuple and len(v) <= MAX_BATCH_COMMANDS:
        for cmd in v:
            if type(cmd) is not bytes:
                raise WireError(f"{what}: want array of bin")
        return v
    raise WireError(f"{what}: want array of at most {MAX_BATCH_COMMANDS} bin")


def _entry(v: object, what: str) -> LogEntry:
    if type(v) is tuple and len(v) == 3:
        return LogEntry(_log_slot(v[0], what), _ballot(v[1], what), _value(v[2], what))
    raise WireError(f"{what}: want [slot, ballot, value]")


def _entries(v: object, what: str) -> tuple[LogEntry, ...]:
    if type(v) is tuple and len(v) <= MAX_MESSAGE_ITEMS:
        return tuple([_entry(e, what) for e in v])
    raise WireError(f"{what}: want array of at most {MAX_MESSAGE_ITEMS}")


def _chosen(v: object, what: str) -> tuple[tuple[int, Value], ...]:
    if type(v) is not tuple or len(v) > MAX_MESSAGE_ITEMS:
        raise WireError(f"{what}: want array of at most {MAX_MESSAGE_ITEMS}")
    out = []
    for pair in v:
        if type(pair) is not tuple or len(pair) != 2:
            raise WireError(f"{what}: want [slot, value]")
        out.append((_log_slot(pair[0], what), _value(pair[1], what)))
    return tuple(out)


def _snapshot_info(v: object, what: str) -> SnapshotInfo:
    if (type(v) is tuple and len(v) == 3 and type(v[2]) is bytes
            and len(v[2]) == CHECKSUM_BYTES):
        return SnapshotInfo(_log_slot(v[0], what), _size(v[1], what), v[2])
    raise WireError(f"{what}: want [index, size, sha256]")


def _opt_snapshot_info(v: object, what: str) -> SnapshotInfo | None:
    return None if v is None else _snapshot_info(v, what)


_MAX_SESSION_ID = 2**63 - 1


def _session_ids(v: object, what: str) -> tuple[int, ...]:
    if type(v) is tuple and len(v) <= MAX_RENEWED:
        for i in v:
            if type(i) is not int or not 1 <= i <= _MAX_SESSION_ID:
                raise WireError(f"{what}: want array of session ids in [1, 2**63 - 1]")
        return v
    raise WireError(f"{what}: want array of at most {MAX_RENEWED} session ids")


# --- per-class codecs ----------------------------------------------------------------
# Encoders return positional tuples (msgpack packs tuples as arrays); decoders take the
# unpacked tuple, whose length the dispatcher has already checked against ARITY.

def _b(b: Ballot) -> tuple[int, str]:
    return (b.round, b.node)


def _enc_prepare(m: Prepare) -> tuple[object, ...]:
    return (m.src, (m.ballot.round, m.ballot.node), m.from_slot)


def _dec_prepare(p: tuple[object, ...]) -> Prepare:
    return Prepare(_node(p[0], "Prepare.src"), _ballot(p[1], "Prepare.ballot"),
                   _uint(p[2], "Prepare.from_slot"))


def _enc_promise(m: Promise) -> tuple[object, ...]:
    acc = tuple([(e.slot, (e.ballot.round, e.ballot.node), e.value) for e in m.accepted])
    return (m.src, _b(m.ballot), m.from_slot, acc, m.commit_index, m.snapshot_index,
            m.next_slot, m.incarnation)


def _dec_promise(p: tuple[object, ...]) -> Promise:
    return Promise(_node(p[0], "Promise.src"), _ballot(p[1], "Promise.ballot"),
                   _uint(p[2], "Promise.from_slot"), _entries(p[3], "Promise.accepted"),
                   _uint(p[4], "Promise.commit_index"), _uint(p[5], "Promise.snapshot_index"),
                   _uint(p[6], "Promise.next_slot"), _uint(p[7], "Promise.incarnation"))


def _enc_nack(m: Nack) -> tuple[object, ...]:
    return (m.src, _b(m.ballot), _b(m.promised))


def _dec_nack(p: tuple[object, ...]) -> Nack:
    return Nack(_node(p[0], "Nack.src"), _ballot(p[1], "Nack.ballot"),
                _ballot(p[2], "Nack.promised"))


def _enc_accept(m: Accept) -> tuple[object, ...]:
    return (m.src, (m.ballot.round, m.ballot.node), m.slot, m.value, m.commit_index)


def _dec_accept(p: tuple[object, ...]) -> Accept:
    return Accept(_node(p[0], "Accept.src"), _ballot(p[1], "Accept.ballot"),
                  _log_slot(p[2], "Accept.slot"), _value(p[3], "Accept.value"),
                  _uint(p[4], "Accept.commit_index"))


def _enc_accepted(m: Accepted) -> tuple[object, ...]:
    return (m.src, (m.ballot.round, m.ballot.node), m.slot, m.incarnation)


def _dec_accepted(p: tuple[object, ...]) -> Accepted:
    return Accepted(_node(p[0], "Accepted.src"), _ballot(p[1], "Accepted.ballot"),
                    _log_slot(p[2], "Accepted.slot"), _uint(p[3], "Accepted.incarnation"))


def _enc_heartbeat(m: Heartbeat) -> tuple[object, ...]:
    return (m.src, (m.ballot.round, m.ballot.node), m.commit_index, m.round, m.renewed)


def _dec_heartbeat(p: tuple[object, ...]) -> Heartbeat:
    return Heartbeat(_node(p[0], "Heartbeat.src"), _ballot(p[1], "Heartbeat.ballot"),
                     _uint(p[2], "Heartbeat.commit_index"), _uint(p[3], "Heartbeat.round"),
                     _session_ids(p[4], "Heartbeat.renewed"))


def _enc_heartbeat_ack(m: HeartbeatAck) -> tuple[object, ...]:
    return (m.src, (m.ballot.round, m.ballot.node), m.round, m.commit_index, m.incarnation)


def _dec_heartbeat_ack(p: tuple[object, ...]) -> HeartbeatAck:
    return HeartbeatAck(_node(p[0], "HeartbeatAck.src"), _ballot(p[1], "HeartbeatAck.ballot"),
                        _uint(p[2], "HeartbeatAck.round"),
                        _uint(p[3], "HeartbeatAck.commit_index"),
                        _uint(p[4], "HeartbeatAck.incarnation"))


def _enc_catchup_request(m: CatchupRequest) -> tuple[object, ...]:
    return (m.src, m.from_slot, m.to_slot)


def _dec_catchup_request(p: tuple[object, ...]) -> CatchupRequest:
    return CatchupRequest(_node(p[0], "CatchupRequest.src"),
                          _log_slot(p[1], "CatchupRequest.from_slot"),
                          _log_slot(p[2], "CatchupRequest.to_slot"))


def _info(s: SnapshotInfo) -> tuple[int, int, bytes]:
    return (s.index, s.size, s.checksum)


def _enc_catchup_reply(m: CatchupReply) -> tuple[object, ...]:
    snap = None if m.snapshot is None else _info(m.snapshot)
    cfg = None if m.config is None else _enc_membership(m.config)
    return (m.src, _b(m.ballot), m.chosen, snap, m.commit_index, cfg)


def _dec_catchup_reply(p: tuple[object, ...]) -> CatchupReply:
    return CatchupReply(_node(p[0], "CatchupReply.src"), _ballot(p[1], "CatchupReply.ballot"),
                        _chosen(p[2], "CatchupReply.chosen"),
                        _opt_snapshot_info(p[3], "CatchupReply.snapshot"),
                        _uint(p[4], "CatchupReply.commit_index"),
                        None if p[5] is None else _membership(p[5], "CatchupReply.config"))


def _enc_membership(c: Membership) -> tuple[object, ...]:
    return tuple([(m.id, m.incarnation, m.voting, m.address, m.publish, m.http, m.public_key)
                  for m in c.members])


def _membership(v: object, what: str) -> Membership:
    """A configuration: at most MAX_MEMBERS rows of (id, incarnation, voting, address,
    publish, http, public_key); ids 1..64 characters, sorted and unique; incarnations in
    [0, 2**62]; addresses and keys str of at most 512 characters."""
    if type(v) is not tuple or len(v) > MAX_MEMBERS:
        raise WireError(f"{what}: want array of at most {MAX_MEMBERS} members")
    rows = []
    for r in v:
        if (type(r) is not tuple or len(r) != 7 or type(r[2]) is not bool
                or not all(type(x) is str and len(x) <= MAX_FIELD_CHARS for x in r[3:])):
            raise WireError(f"{what}: want [id, incarnation, voting, address, publish, http, "
                            "public_key]")
        rows.append(Member(_node(r[0], what), _uint(r[1], what), r[2], *r[3:]))
    return Membership(tuple(rows))


def _enc_snapshot_request(m: SnapshotRequest) -> tuple[object, ...]:
    return (m.src, m.index, m.offset)


def _dec_snapshot_request(p: tuple[object, ...]) -> SnapshotRequest:
    return SnapshotRequest(_node(p[0], "SnapshotRequest.src"),
                           _log_slot(p[1], "SnapshotRequest.index"),
                           _size(p[2], "SnapshotRequest.offset"))


def _enc_snapshot_chunk(m: SnapshotChunk) -> tuple[object, ...]:
    return (m.src, _info(m.snapshot), m.offset, m.data)


def _dec_snapshot_chunk(p: tuple[object, ...]) -> SnapshotChunk:
    data = p[3]
    if type(data) is not bytes or len(data) > SNAPSHOT_CHUNK_BYTES:
        raise WireError(f"SnapshotChunk.data: want bin of at most {SNAPSHOT_CHUNK_BYTES} bytes")
    return SnapshotChunk(_node(p[0], "SnapshotChunk.src"),
                         _snapshot_info(p[1], "SnapshotChunk.snapshot"),
                         _size(p[2], "SnapshotChunk.offset"), data)


def _enc_prevote(m: PreVote) -> tuple[object, ...]:
    return (m.src, m.round, m.commit_index)


def _dec_prevote(p: tuple[object, ...]) -> PreVote:
    return PreVote(_node(p[0], "PreVote.src"), _uint(p[1], "PreVote.round"),
                   _uint(p[2], "PreVote.commit_index"))


def _enc_prevote_reply(m: PreVoteReply) -> tuple[object, ...]:
    return (m.src, m.round, m.granted)


def _dec_prevote_reply(p: tuple[object, ...]) -> PreVoteReply:
    if type(p[2]) is not bool:
        raise WireError("PreVoteReply.granted: want bool")
    return PreVoteReply(_node(p[0], "PreVoteReply.src"), _uint(p[1], "PreVoteReply.round"),
                        p[2])


def _enc_timeout_now(m: TimeoutNow) -> tuple[object, ...]:
    return (m.src, _b(m.ballot))


def _dec_timeout_now(p: tuple[object, ...]) -> TimeoutNow:
    return TimeoutNow(_node(p[0], "TimeoutNow.src"), _ballot(p[1], "TimeoutNow.ballot"))


_Encoder = Callable[[Any], tuple[object, ...]]
_Decoder = Callable[[tuple[object, ...]], Message]

# cls -> (encoder, decoder, arity); tags follow MESSAGE_TYPES order (Prepare = 1).
_CODECS: dict[type, tuple[_Encoder, _Decoder, int]] = {
    Prepare: (_enc_prepare, _dec_prepare, 3),
    Promise: (_enc_promise, _dec_promise, 8),
    Nack: (_enc_nack, _dec_nack, 3),
    Accept: (_enc_accept, _dec_accept, 5),
    Accepted: (_enc_accepted, _dec_accepted, 4),
    Heartbeat: (_enc_heartbeat, _dec_heartbeat, 5),
    HeartbeatAck: (_enc_heartbeat_ack, _dec_heartbeat_ack, 5),
    CatchupRequest: (_enc_catchup_request, _dec_catchup_request, 3),
    CatchupReply: (_enc_catchup_reply, _dec_catchup_reply, 6),
    SnapshotRequest: (_enc_snapshot_request, _dec_snapshot_request, 3),
    SnapshotChunk: (_enc_snapshot_chunk, _dec_snapshot_chunk, 4),
    PreVote: (_enc_prevote, _dec_prevote, 3),
    PreVoteReply: (_enc_prevote_reply, _dec_prevote_reply, 3),
    TimeoutNow: (_enc_timeout_now, _dec_timeout_now, 2),
}
if set(_CODECS) != set(MESSAGE_TYPES):  # a new message class needs a codec and a tag
    raise ImportError("wire codecs out of sync with core.messages.MESSAGE_TYPES")

PEER_TAGS: Final[Mapping[type, int]] = {cls: i for i, cls in enumerate(MESSAGE_TYPES, 1)}

# class -> (header bytes, encoder); tag -> (class name, decoder, arity)
_PEER_ENCODERS: dict[type, tuple[bytes, _Encoder]] = {
    cls: (bytes((WIRE_VERSION, PEER_TAGS[cls])), _CODECS[cls][0]) for cls in MESSAGE_TYPES
}
_PEER_DECODERS: dict[int, tuple[str, _Decoder, int]] = {
    PEER_TAGS[cls]: (cls.__name__, _CODECS[cls][1], _CODECS[cls][2]) for cls in MESSAGE_TYPES
}
_CLIENT_HEADERS: dict[int, bytes] = {t: bytes((WIRE_VERSION, t)) for t in CLIENT_TAGS}


# --- public API ----------------------------------------------------------------------

def _finish(header: bytes, payload: bytes) -> bytes:
    body = header + payload
    if len(body) > MAX_FRAME_BYTES:
        # Ours to prevent: senders pack by bytes and chunk snapshots, clients cap values.
        raise UsageError(f"encoded frame too large ({len(body)} > {MAX_FRAME_BYTES} bytes)")
    return body


def encode_peer(msg: Message) -> bytes:
    """Encode a peer message. Raises ``UsageError`` for a non-message or oversize frame."""
    codec = _PEER_ENCODERS.get(type(msg))
    if codec is None:
        raise UsageError(f"not a peer message: {type(msg).__name__}")
    header, enc = codec
    try:
        packed = _pack(enc(msg))
    except (TypeError, ValueError, OverflowError) as e:  # e.g. an int beyond 64 bits
        raise UsageError(f"{type(msg).__name__} not encodable: {e}") from e
    return _finish(header, packed)


def _peer_from(tag: int, payload: object) -> Message:
    name, dec, arity = _PEER_DECODERS[tag]
    if type(payload) is not tuple or len(payload) != arity:
        raise WireError(f"{name}: want array of {arity} fields")
    try:
        return dec(payload)
    except WireError:
        raise
    except (ProtocolError, TypeError, ValueError) as e:  # the dataclass's own checks
        raise WireError(f"{name}: {e}") from e


def decode_peer(body: bytes) -> Message:
    """Decode a peer message body, or raise ``WireError``."""
    tag, payload = _check_frame(body)
    if tag in CLIENT_TAGS:
        raise WireError(f"tag {tag} is not a peer message")
    return _peer_from(tag, payload)


def encode_client(tag: int, payload: dict[str, Any]) -> bytes:
    """Encode a client request/reply or event: ``payload`` is a map with str keys."""
    header = _CLIENT_HEADERS.get(tag)
    if header is None:
        raise UsageError(f"not a client tag: {tag!r}")
    if type(payload) is not dict or not all(type(k) is str for k in payload):
        raise UsageError("client payload must be a dict with str keys")
    try:
        packed = _pack(payload)
    except (TypeError, ValueError, OverflowError) as e:
        raise UsageError(f"client payload not encodable: {e}") from e
    return _finish(header, packed)


def _client_from(tag: int, payload: object) -> dict[str, Any]:
    if type(payload) is not dict:
        raise WireError(f"tag {tag}: want map")
    for k in payload:
        if type(k) is not str:
            raise WireError(f"tag {tag}: want str keys")
    return payload


def decode_client(body: bytes, expect_tag: int) -> dict[str, Any]:
    """Decode a client-side body whose tag must be ``expect_tag``, or raise ``WireError``."""
    if expect_tag not in CLIENT_TAGS:
        raise UsageError(f"not a client tag: {expect_tag!r}")
    tag, payload = _check_frame(body)
    if tag != expect_tag:
        raise WireError(f"want tag {expect_tag}, got {tag}")
    return _client_from(tag, payload)


def decode(body: bytes) -> tuple[int, Message | dict[str, Any]]:
    """Decode any body: ``(tag, message)`` for peers, ``(tag, map)`` for client tags."""
    tag, payload = _check_frame(body)
    if tag in CLIENT_TAGS:
        return tag, _client_from(tag, payload)
    return tag, _peer_from(tag, payload)


def oversize_request_id(body: bytes | memoryview) -> tuple[bool, int | str | None]:
    """For a frame over ``MAX_FRAME_BYTES``: whether it claims to be a client request, and
    its ``id`` (None if not found), so the node can answer it ``bad_request`` instead of
    leaving the client to wait out its timeout. Reads the map's keys and skips the values
    (the transport admits frames of at most twice the cap, so the work is bounded);
    never raises."""
    if len(body) < _HEADER_BYTES + 1 or body[0] != WIRE_VERSION or body[1] != CLIENT_REQUEST:
        return False, None
    try:
        u = msgpack.Unpacker(raw=False, strict_map_key=True, max_ext_len=0,
                             max_buffer_size=len(body))
        u.feed(memoryview(body)[_HEADER_BYTES:])
        for _ in range(min(u.read_map_header(), 64)):
            if u.unpack() == "id":
                rid = u.unpack()
                return True, rid if type(rid) in (int, str) and len(str(rid)) <= 64 else None
            u.skip()
    except Exception:   # anything malformed: no id to answer with
        pass
    return True, None
