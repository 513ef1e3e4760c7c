#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine and runs the tests.
#   bash tests/run.sh              the default suite (what CI runs)
#   bash tests/run.sh --soak ...   extra pytest arguments are passed through
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  pkgs=$(grep -vE '^\s*(#|$)' tests/apt-packages.txt | tr '\n' ' ')
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    echo "== installing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=900 $missing >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
echo "== installing kvstore with its test extra"
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

echo "== lint and types"
.venv/bin/ruff check kvstore tests
.venv/bin/mypy

echo "== tests"
exec .venv/bin/python -m pytest -q "$@"
