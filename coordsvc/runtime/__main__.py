"""`python -m coordsvc.runtime --cluster FILE --node ID`: the same as `coordctl serve`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..clusterfile import ClusterFileError, load
from .logs import FORMATS, LEVELS
from .node import serve


def main() -> int:
    p = argparse.ArgumentParser(prog="coordsvc-node")
    p.add_argument("--cluster", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--log-level", choices=LEVELS, default="info")
    p.add_argument("--log-format", choices=FORMATS, default="text")
    p.add_argument("--http", metavar="HOST:PORT", default=None)
    a = p.parse_args()
    try:
        cluster = load(Path(a.cluster))
        cluster.node(a.node)
    except ClusterFileError as e:
        print(f"coordctl serve: {e}", file=sys.stderr)
        return 2
    return serve(cluster, a.node, cluster.config, a.log_level, a.log_format, a.http)


if __name__ == "__main__":
    sys.exit(main())
