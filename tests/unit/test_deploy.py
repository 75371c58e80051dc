"""deploy/ checked as far as this machine allows: no Docker engine, no Kubernetes cluster.

- systemd: ``systemd-analyze verify`` (no warning at all) and its offline security score;
- Kubernetes: every manifest against the API schemas (``kubernetes-validate``, strict, the
  oldest and newest versions it ships) and against each other (selectors, ports, probes);
- compose and the Dockerfile: parsed, and checked against the cluster `cluster init`
  writes for them (hosts, ports) and the files they copy;
- every coordctl command line in these files and in deploy/README.md: parsed by coordctl's
  own parser (shell snippets run by sh with a recording coordctl).

tests/integration/test_deploy_run.py runs what can run here for real.
"""
from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from coordsvc import clusterfile

from ..deploy_files import (
    COORDCTL,
    DEPLOY,
    ROOT,
    backup_script,
    command_path,
    coordctl_calls,
    dockerfile_instructions,
    parse_coordctl,
    run_recording,
)

UNIT = DEPLOY / "systemd" / "coordsvc@.service"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


# -- systemd --------------------------------------------------------------------------------

def _unit() -> configparser.RawConfigParser:
    p = configparser.RawConfigParser(strict=False, delimiters=("=",), interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(UNIT.read_text())
    return p


def _instance(tmp_path: Path) -> Path:
    """The template as instance n1, its ExecStart pointed at this venv's real coordctl
    (verify checks that the command exists and is executable)."""
    text = UNIT.read_text().replace("/opt/coordsvc/venv/bin/coordctl", COORDCTL)
    unit = tmp_path / "coordsvc@n1.service"
    unit.write_text(text)
    return unit


def test_the_systemd_units_verify_without_a_single_warning(tmp_path: Path) -> None:
    units = [_instance(tmp_path)]
    for name in ("coordsvc-backup.service", "coordsvc-backup.timer"):
        units.append(tmp_path / name)
        units[-1].write_text((DEPLOY / "systemd" / name).read_text().replace(
            "/opt/coordsvc/venv/bin/coordctl", COORDCTL))
    assert sorted(p.name for p in (DEPLOY / "systemd").iterdir()) == [
        "coordsvc-backup.service", "coordsvc-backup.timer", "coordsvc@.service"]
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", *map(str, units)],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr, r.stdout) == (0, "", "")
    # The check is real: a misspelt key is reported.
    bad = tmp_path / "coordsvc@n2.service"
    bad.write_text(_instance(tmp_path).read_text().replace("Restart=on-failure", "Restrat=on-failure"))
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in r.stderr


def test_the_systemd_unit_restarts_on_failure_within_a_start_limit_and_is_hardened(
        tmp_path: Path) -> None:
    u = _unit()
    unit, service = u["Unit"], u["Service"]
    assert service["Restart"] == "on-failure"
    # A refused start exits 1 every time: the start limit ends the loop.
    assert int(unit["StartLimitBurst"]) <= 10 and int(unit["StartLimitIntervalSec"]) >= 60
    assert int(unit["StartLimitIntervalSec"]) > int(unit["StartLimitBurst"]) * int(service["RestartSec"])
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ReadWritePaths", "/srv/coord/%i"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("KillSignal", "SIGTERM")]:
        assert service[key] == value, key
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", str(_instance(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert m is not None, r.stdout[-500:]
    print(m.group(0))
    assert float(m.group(1)) <= 2.0, r.stdout


def test_the_units_command_is_a_real_coordctl_command() -> None:
    argv = shlex.split(_unit()["Service"]["ExecStart"].replace("%i", "n1"))
    assert argv[0] == "/opt/coordsvc/venv/bin/coordctl"
    ctx = parse_coordctl(argv[1:])
    assert command_path(ctx) == "coordctl serve"
    assert ctx.params["node"] == "n1" and str(ctx.params["cluster"]) == "/srv/coord/cluster.toml"
    # The data directory it may write is the one `cluster init --dir /srv/coord` gives n1.
    assert _unit()["Service"]["ReadWritePaths"].replace("%i", "n1") == "/srv/coord/n1"


def test_the_backup_units_command_is_a_real_snapshot_save(tmp_path: Path) -> None:
    # Run by sh as systemd would, the venv's coordctl swapped for the recording one.
    script = backup_script().replace("/opt/coordsvc/venv/bin/coordctl", "coordctl")
    r, calls = run_recording(["sh", "-ec", script], tmp_path / "stub", {})
    assert r.returncode == 0, r.stderr
    (argv,) = calls
    ctx = parse_coordctl(argv)
    assert command_path(ctx) == "coordctl snapshot save"
    assert re.fullmatch(r"/var/backups/coordsvc/coord-\d{8}T\d{6}Z\.snap", str(ctx.params["file"]))


# -- Kubernetes -----------------------------------------------------------------------------

def _manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_against_the_kubernetes_api_schemas(version: str) -> None:
    docs = list(_manifests().values())
    assert {d["kind"] for d in docs} == {"StatefulSet", "Service", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_statefulset_service_and_budget_fit_together() -> None:
    m = _manifests()
    sts, svc, pdb = m["StatefulSet"], m["Service"], m["PodDisruptionBudget"]
    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    (main,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The ports `cluster init --same-ports --base-port 7100` gives every node.
    assert ports == {"router": 7101, "publish": 7201, "http": 7301}
    scrape = spec["template"]["metadata"]["annotations"]
    assert scrape == {"prometheus.io/scrape": "true", "prometheus.io/port": str(ports["http"]),
                      "prometheus.io/path": "/metrics"}
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == ports
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {v["name"]: v["mountPath"] for v in main["volumeMounts"]}
    assert mounts == {claim["metadata"]["name"]: "/srv/coord"}
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"coordsvc-node-keys", "coordsvc-init-key"}
    assert pod["securityContext"]["runAsNonRoot"] is True


def _cluster_for_pods(tmp_path: Path) -> clusterfile.Cluster:
    """The cluster deploy/README.md tells Kubernetes users to create (namespace default)."""
    hosts = [a for i in range(3) for a in ("--host", f"coordsvc-{i}.coordsvc.default.svc.cluster.local")]
    r = subprocess.run([COORDCTL, "cluster", "init", "--nodes", "3", "--dir", str(tmp_path / "admin"),
                        "--same-ports", "--bind-host", "0.0.0.0", *hosts],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return clusterfile.load(tmp_path / "admin" / "cluster.toml")


def test_the_pods_commands_are_real_coordctl_commands_for_their_own_node(tmp_path: Path) -> None:
    pod = _manifests()["StatefulSet"]["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    (prepare,) = pod["initContainers"]
    c = _cluster_for_pods(tmp_path)
    for ordinal in range(3):
        node = f"n{ordinal + 1}"
        r, calls = run_recording(main["command"], tmp_path / "stub", {"HOSTNAME": f"coordsvc-{ordinal}"})
        assert r.returncode == 0, r.stderr
        (argv,) = calls
        ctx = parse_coordctl(argv)
        assert command_path(ctx) == "coordctl serve" and ctx.params["node"] == node
        spec = c.node(node)
        # Advertised: the pod's stable name; bound: every interface, on the probed ports.
        assert spec.host == f"coordsvc-{ordinal}.coordsvc.default.svc.cluster.local"
        assert (spec.listen, spec.publish_listen, spec.http_bind) == (
            "tcp://0.0.0.0:7101", "tcp://0.0.0.0:7201", "0.0.0.0:7301")
    script = prepare["command"][2]
    assert [command_path(parse_coordctl(argv)) for argv in coordctl_calls(
        script.splitlines()[-1])] == ["coordctl node init"]


# -- compose and the Dockerfile -------------------------------------------------------------

def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_compose_runs_three_nodes_with_real_commands_on_the_cluster_init_writes() -> None:
    services = _compose()["services"]
    assert set(services) == {"init", "coord1", "coord2", "coord3"}
    init = services["init"]
    assert init["entrypoint"][0] == "sh"
    (init_call,) = coordctl_calls(init["command"][0])
    init_ctx = parse_coordctl(init_call)
    assert command_path(init_ctx) == "coordctl cluster init"
    p = init_ctx.params
    assert p["nodes"] == 3 and p["same_ports"] and p["bind_host"] == "0.0.0.0"
    hosts = list(p["host"])
    assert hosts == ["coord1", "coord2", "coord3"]
    http_port = p["base_port"] + 201
    for i, name in enumerate(("coord1", "coord2", "coord3"), start=1):
        svc = services[name]
        assert svc["hostname"] == name == hosts[i - 1]
        ctx = parse_coordctl(svc["command"])
        assert command_path(ctx) == "coordctl serve" and ctx.params["node"] == f"n{i}"
        assert str(ctx.params["cluster"]) == f"{p['directory']}/cluster.toml"
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert svc["restart"] == "on-failure:5"
        assert "coord:/srv/coord" in svc["volumes"] and str(p["directory"]) == "/srv/coord"
        (published,) = svc["ports"]
        assert published.startswith("127.0.0.1:") and published.endswith(f":{http_port}")
        assert f"127.0.0.1:{http_port}/healthz" in " ".join(svc["healthcheck"]["test"])
        assert (ROOT / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT


def test_the_dockerfile_builds_on_debian_bookworm_and_runs_coordctl_as_a_user() -> None:
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    kinds = [k for k, _ in ins]
    assert kinds[0] == "FROM" and ins[0][1] == "debian:bookworm-slim"
    assert set(kinds) <= {"FROM", "RUN", "COPY", "ENV", "USER", "WORKDIR", "VOLUME", "EXPOSE",
                          "STOPSIGNAL", "ENTRYPOINT", "CMD"}
    for k, args in ins:
        if k == "COPY":
            *sources, _ = args.split()
            assert all((ROOT / s).exists() for s in sources), args
    args = dict(ins)
    assert "python3-venv" in next(a for k, a in ins if k == "RUN" and "apt-get" in a)
    assert args["USER"] == "coordsvc" and args["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(args["ENTRYPOINT"]) == ["coordctl"] and json.loads(args["CMD"]) == ["--help"]
    exposed = {int(p) for p in args["EXPOSE"].split()}
    pod = _manifests()["StatefulSet"]["spec"]["template"]["spec"]
    assert exposed == {p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert pod["containers"][0]["image"] == _compose()["x-node"]["image"] == "coordsvc:0.1.0"


# -- deploy/README.md -------------------------------------------------------------------------

def _readme_commands() -> list[str]:
    text = (DEPLOY / "README.md").read_text()
    lines: list[str] = []
    for block in re.findall(r"```(?:sh|console)\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        lines += [ln.strip() for ln in joined.splitlines()]
    return [ln for ln in lines if "coordctl " in ln]


def test_every_coordctl_command_in_the_deploy_readme_parses() -> None:
    lines = _readme_commands()
    assert len(lines) >= 6
    seen = set()
    for line in lines:
        for argv in coordctl_calls(line.lstrip("$ ")):
            if argv and argv[0] == "--help":
                continue
            seen.add(command_path(parse_coordctl(argv)))
    assert {"coordctl cluster init", "coordctl node init", "coordctl serve", "coordctl status",
            "coordctl snapshot save", "coordctl snapshot restore"} <= seen
