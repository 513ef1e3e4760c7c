#!/usr/bin/env bash
# Builds the kvstore container image on the host, with no registry pull when none is reachable.
#   bash deploy/build-image.sh [TAG]              default TAG: kvstore:latest
# Base image: $KVSTORE_BASE_IMAGE if set; else python:3.11-slim if present or pullable; else
# the local one deploy/build-base-image.sh makes (debootstrap + docker import). Python
# packages come from wheels prepared on the host (deploy/prepare-wheels.sh): no network and
# no TLS inside the build.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-${KVSTORE_IMAGE:-kvstore:latest}}
die() { echo "build-image.sh: $*" >&2; exit 1; }
docker info >/dev/null 2>&1 || die "no docker engine answers (as root: bash deploy/daemons.sh start docker)"

base=${KVSTORE_BASE_IMAGE:-}
if [ -z "$base" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 \
     || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    base=python:3.11-slim
  else
    echo "== no registry: using a local base image" >&2
    bash deploy/build-base-image.sh
    base=kvstore-local/python:3.11-bookworm
  fi
fi
bash deploy/prepare-wheels.sh
t0=$(date +%s)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The legacy builder: BuildKit needs the buildx plugin, which Debian's docker.io lacks.
if ! DOCKER_BUILDKIT=0 docker build -q --build-arg BASE_IMAGE="$base" -t "$TAG" . >"$out" 2>&1; then
  grep -v -e 'legacy builder is deprecated' -e 'buildx' "$out" | tail -30 >&2
  die "docker build failed"
fi
echo "== built $TAG from $base in $(( $(date +%s) - t0 )) s" >&2
