#!/usr/bin/env bash
# Prepares, on the host, every wheel the container image installs: kvstore itself and its
# runtime dependencies for CPython 3.11 on manylinux x86_64. The Dockerfile installs them with
# `pip install --no-index`, so the build needs no network and no TLS inside the container.
#   bash deploy/prepare-wheels.sh [DIR]        default DIR: deploy/.cache/wheels
# Dependencies are downloaded again only when pyproject.toml's list changes; the kvstore
# wheel is rebuilt every time (the version number does not change with the code).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-deploy/.cache/wheels}
PY=${PYTHON:-python3}
die() { echo "prepare-wheels.sh: $*" >&2; exit 1; }
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip"
mkdir -p "$DIR"
# deploy/.cache holds only built artifacts: keep it out of git without touching .gitignore.
[ -f deploy/.cache/.gitignore ] || { mkdir -p deploy/.cache && echo '*' >deploy/.cache/.gitignore; }

deps=$("$PY" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
stamp="$DIR/.deps"
if [ "$(cat "$stamp" 2>/dev/null)" != "$deps" ]; then
  echo "== downloading dependency wheels into $DIR" >&2
  find "$DIR" -name '*.whl' ! -name 'kvstore-*' -delete
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
    -d "$DIR" $(echo "$deps" | tr '\n' ' ') || die "pip download failed"
  printf '%s' "$deps" >"$stamp"
fi

echo "== building the kvstore wheel" >&2
find "$DIR" -name 'kvstore-*.whl' -delete
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The host's setuptools when it is recent enough (no download), else an isolated build.
if "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null \
   && "$PY" -c 'import wheel' 2>/dev/null; then
  iso=--no-build-isolation
else
  iso=
fi
# shellcheck disable=SC2086
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps $iso -w "$tmp" . >/dev/null \
  || die "building the kvstore wheel failed"
mv "$tmp"/kvstore-*.whl "$DIR"/
ls "$DIR" >&2
