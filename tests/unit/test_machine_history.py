"""A key's history, against a model that keeps every version: written once, a key's one
version is its value (no history object); the first change makes the history real; a
snapshot round trip gives back the same histories either way."""
from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from coordsvc.core import machine as machine_mod
from coordsvc.core.commands import Delete, Put, Request, Txn
from coordsvc.core.machine import Machine
from coordsvc.core.protocol import ChangeType

KEYS = ["a", "b", "c"]
KEEP = 3     # versions kept per key here (KEY_HISTORY), so trimming happens too

_put = st.builds(lambda k, v: Put(k, v), st.sampled_from(KEYS), st.binary(max_size=3))
_delete = st.builds(Delete, st.sampled_from(KEYS))
_txn = st.builds(
    lambda ks, v, d: Txn(success=tuple(Delete(k) if d else Put(k, v) for k in sorted(set(ks)))),
    st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), st.binary(max_size=3), st.booleans())
_ops = st.lists(st.one_of(_put, _delete, _txn), max_size=40)


def _model(m: Machine, ops: list[Put | Delete | Txn]) -> dict[str, list[tuple[str, bytes, int]]]:
    """Apply ``ops`` to ``m``; return every key's full history from the revisions the
    machine reports (a delete of an absent key changes nothing)."""
    full: dict[str, list[tuple[str, bytes, int]]] = {}
    live: set[str] = set()
    for i, op in enumerate(ops, 1):
        before = m.revision
        m.apply(i, Request("", 0, 0, op))
        if m.revision == before:
            continue
        for w in (op.success if isinstance(op, Txn) else (op,)):
            if isinstance(w, Put):
                full.setdefault(w.key, []).append(("put", w.value, m.revision))
                live.add(w.key)
            elif w.key in live:
                full[w.key].append(("delete", b"", m.revision))
                live.discard(w.key)
    return full


def _history(m: Machine, key: str) -> list[tuple[str, bytes, int]]:
    return [(str(e.type), e.value, e.revision) for e in m.history(key)]


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_histories_match_a_model_and_survive_a_snapshot(ops: list[Put | Delete | Txn]) -> None:
    with mock.patch.object(machine_mod, "KEY_HISTORY", KEEP):
        m = Machine()
        full = _model(m, ops)
        restored = Machine.restore(m.snapshot())
        for key in KEYS:
            want = full.get(key, [])[-KEEP:]
            assert _history(m, key) == want, (key, ops)
            assert _history(restored, key) == want, (key, ops)
            # The memory this saves: no history object for a key written once (a delete
            # needs a put before it, so one version is always a put), nor never written.
            has_object = len(full.get(key, [])) > 1
            assert (key in m._history) is has_object
            assert (key in restored._history) is has_object
        assert restored.snapshot() == m.snapshot()


def test_a_key_written_once_costs_no_history_object_and_reads_as_one_version() -> None:
    m = Machine()
    for i in range(100):
        m.apply(i + 1, Request("", 0, 0, Put(f"k{i}", b"v")))
    m.apply(101, Request("", 0, 0, Put("k7", b"w")))
    assert set(m._history) == {"k7"}
    assert [(e.type, e.value) for e in m.history("k7")] == [(ChangeType.PUT, b"v"),
                                                             (ChangeType.PUT, b"w")]
    assert [(e.type, e.value, e.revision) for e in m.history("k3")] == [(ChangeType.PUT, b"v", 4)]
    assert m.history("absent") == []
