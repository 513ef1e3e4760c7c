#!/usr/bin/env bash
# Sets everything up on a fresh machine and starts a local 3-node cluster on
# 127.0.0.1:7001-7003 (data in ./kvstore-data, reused on restart). Ctrl-C stops it.
#   bash deploy/local-cluster.sh                 zero configuration
#   bash deploy/local-cluster.sh --nodes 5       extra flags go to `kvstore cluster`
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv" >&2
  python3 -m venv .venv
fi
echo "== installing kvstore" >&2
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e .
echo "== starting the cluster (Ctrl-C to stop); in another shell: source .venv/bin/activate" >&2
exec .venv/bin/kvstore cluster "$@"
