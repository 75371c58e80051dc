"""`python -m bench.scale --quick` runs end to end (one point of two sweeps; no timing asserted).

Benchmarks are not tests: this checks only that the sweeps drive real clusters (started and
stopped by the bench itself) to figures, and that the summary — and the plots, where
matplotlib is installed — are written where asked.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_quick_scale_sweep_writes_figures_summary_and_plots(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench.scale", "--quick", "--sweeps", "clients,keys",
                        "--points", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    sweeps = json.loads((tmp_path / "scale.json").read_text())["sweeps"]
    assert set(sweeps) == {"clients", "keys"}
    assert all(s["meta"]["mode"] == "quick" for s in sweeps.values())
    (clients,) = sweeps["clients"]["points"]
    assert clients["clients"] == 1 and clients["ops"] > 0 and clients["errors"] == 0
    (keys,) = sweeps["keys"]["points"]
    assert keys["keys_on_leader"] >= keys["keys"]
    assert sorted(keys["rss_mb"]) == ["n1", "n2", "n3"] and None not in keys["rss_mb"].values()
    assert keys["restart_caught_up_s"] is not None, keys   # the restarted follower caught up
    md = (tmp_path / "scale.md").read_text()
    assert "## clients" in md and "## keys" in md and "not measured at 1M keys" in md
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    if importlib.util.find_spec("matplotlib") is not None:
        assert pngs == ["scale-clients.png", "scale-keys.png"]
    else:
        assert pngs == [] and "no plots" in r.stdout
