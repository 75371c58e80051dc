"""coordsvc's benchmarks, run from the repository root as modules (``python -m bench.load``).

Scripts (each has ``--help``):

    python -m bench.load       the issue-7 workload against one system (coordsvc, etcd, pysyncobj)
    python -m bench.compare    every system, interleaved rounds, one markdown table of medians
    python -m bench.scale      how cost grows (clients, value size, keys, watchers, held locks,
                               3 vs 5 nodes), with plots under bench/results/
    python -m bench.memory     RSS per node holding N keys
    python -m bench.profile_leader    py-spy of the leader during put_tp (or seq_put)
    python -m bench.breakdown  where one sequential op's time goes: floors, then each op

Library modules, importable with the standard library alone (the etcd and PySyncObj anchors
run them from ``bench/.venv-anchors``, where coordsvc's dependencies are not installed):
``measure`` (CPU, RSS, percentiles), ``systems`` (the adapter interface), ``workload``
(the tests and the suite runner), ``report`` (result files). ``coord`` is the coordsvc
adapter and needs coordsvc installed; ``anchors/`` holds the etcd and PySyncObj adapters.
"""
