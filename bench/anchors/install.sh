#!/usr/bin/env bash
# Install the benchmark anchors (idempotent): etcd from Debian, and the python etcd3 client
# and PySyncObj in bench/.venv-anchors (kept apart from the project's .venv).
#   etcd-server   Debian 12 package (etcd 3.4.x)
#   etcd3==0.12.0 with protobuf<4 (its generated code predates protobuf 4) and tenacity<7
#                 (etcd3's Lock uses the old two-argument `wait` callback that tenacity 7 dropped)
#   pysyncobj     PyPI
#   py-spy        PyPI, for profiling the coordsvc leader (bench/profile_leader.py)
set -u
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/../.venv-anchors"
status=0

if ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing etcd-server (apt)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server; } \
      >/tmp/bench-apt-etcd.log 2>&1 || { echo "etcd-server: install failed (see /tmp/bench-apt-etcd.log)"; status=1; }
  else
    echo "etcd: not installed and cannot apt-get here (need root): sudo apt-get install etcd-server"
    status=1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "cannot create $venv"; exit 1; }
fi
if ! "$venv/bin/python" -c "import etcd3, pysyncobj; from importlib.metadata import version as v; assert int(v('tenacity').split('.')[0]) < 7" >/dev/null 2>&1; then
  echo "installing etcd3, protobuf<4, tenacity<7, pysyncobj, py-spy into $venv"
  "$venv/bin/pip" install -q 'etcd3==0.12.0' 'protobuf<4' 'tenacity<7' 'pysyncobj' 'py-spy' \
    || { echo "pip install into $venv failed"; status=1; }
fi
# The Debian package enables etcd.service; where an init system started it, it idles on
# :2379 beside our members (which use other ports). We leave it alone and say so.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  echo "note: the system's etcd.service is running; stop it for quieter figures (systemctl stop etcd)"
fi
exit $status
