#!/usr/bin/env bash
# Regenerates kvstore/_pb from proto/kvstore/v1/*.proto (grpcio-tools + mypy-protobuf).
# The generated modules live flat in kvstore/_pb with package-relative imports.
# tests/test_proto_uptodate.py runs this into a temp dir and compares.
#   bash proto/generate.sh [OUT_DIR]     default OUT_DIR: kvstore/_pb
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-kvstore/_pb}"
py="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m grpc_tools.protoc -Iproto \
  --python_out="$tmp" --grpc_python_out="$tmp" \
  --mypy_out="$tmp" --mypy_grpc_out="$tmp" \
  proto/kvstore/v1/*.proto
mkdir -p "$out"
rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
for f in "$tmp"/kvstore/v1/*; do
  # "from kvstore.v1 import x_pb2" / "import kvstore.v1.x_pb2" -> package-relative.
  sed -E \
    -e 's/^from kvstore\.v1 import /from . import /' \
    -e 's/^import kvstore\.v1\.([a-z_0-9]+)$/from . import \1/' \
    -e 's/kvstore\.v1\.([a-z_0-9]+_pb2)\./\1./g' \
    "$f" >"$out/$(basename "$f")"
done
cat >"$out/__init__.py" <<'PY'
"""Generated protobuf and gRPC code (proto/generate.sh); do not edit by hand."""
PY
