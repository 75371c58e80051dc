"""deploy/grafana/coordsvc.json: every expression names only metrics a node exports."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coordsvc.runtime.metrics import METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "coordsvc.json"
_NAME = re.compile(r"\bcoordsvc_[a-z0-9_]+\b")


def _targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for p in panels:
        yield from _targets(p.get("panels", []))
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def test_the_grafana_dashboard_is_valid_json_with_panels_and_a_datasource_variable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] and doc["uid"] and isinstance(doc["schemaVersion"], int)
    assert any(v["type"] == "datasource" for v in doc["templating"]["list"])
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert sum(1 for _ in _targets(doc["panels"])) >= 20


def test_every_grafana_expression_names_metrics_the_node_exports() -> None:
    doc = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for title, expr in _targets(doc["panels"]):
        names = set(_NAME.findall(expr))
        assert names, f"{title!r}: {expr!r} names no coordsvc metric"
        assert names <= METRICS, f"{title!r}: unknown {sorted(names - METRICS)}"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        used |= names
    # the dashboard shows every family the node exports (histograms by _bucket/_sum/_count)
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in METRICS}
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families <= shown, sorted(families - shown)
