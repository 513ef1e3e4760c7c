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
# The source the image is built from: the commit's tree plus any uncommitted change to
# tracked files. An image of TAG built from the same source is kept (no rebuild): running
# `up` again, or a second clone of the same commit, costs nothing. KVSTORE_REBUILD=1 forces.
stamp=""
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  stamp="$(git rev-parse 'HEAD^{tree}')-$(git diff HEAD -- . | sha256sum | cut -c1-16)-$base"
  have=$(docker image inspect -f '{{index .Config.Labels "kvstore.source"}}' "$TAG" 2>/dev/null || true)
  if [ "${KVSTORE_REBUILD:-0}" != 1 ] && [ "$have" = "$stamp" ]; then
    echo "== $TAG is up to date (built from this source)" >&2
    exit 0
  fi
fi
bash deploy/prepare-wheels.sh
t0=$(date +%s)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The legacy builder: BuildKit needs the buildx plugin, which Debian's docker.io lacks.
if ! DOCKER_BUILDKIT=0 docker build -q --build-arg BASE_IMAGE="$base" \
     --label "kvstore.source=$stamp" -t "$TAG" . >"$out" 2>&1; then
  grep -v -e 'legacy builder is deprecated' -e 'buildx' "$out" | tail -30 >&2
  die "docker build failed"
fi
echo "== built $TAG from $base in $(( $(date +%s) - t0 )) s" >&2
