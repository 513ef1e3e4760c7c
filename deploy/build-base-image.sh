#!/usr/bin/env bash
# Builds a local Python base image with no registry: debootstrap a Debian bookworm minbase
# with python3 + venv, then `docker import` it. Use it as the Dockerfile's base:
#   bash deploy/build-base-image.sh                 # -> kvstore-local/python:3.11-bookworm
#   docker build --build-arg BASE_IMAGE=kvstore-local/python:3.11-bookworm -t kvstore .
# Idempotent: an existing image is kept unless --force. Needs root, debootstrap, a docker engine.
set -euo pipefail

TAG=${KVSTORE_BASE_IMAGE:-kvstore-local/python:3.11-bookworm}
FORCE=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --tag=*) TAG=${a#--tag=} ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "build-base-image.sh: unknown argument: $a" >&2; exit 2 ;;
  esac
done

die() { echo "build-base-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
docker info >/dev/null 2>&1 || die "no docker engine answers (start dockerd; see deploy/README section)"

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already present (--force rebuilds)" >&2
  exit 0
fi

# The archive apt already uses on this host (a local mirror if there is one).
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOT=$(mktemp -d /tmp/kvstore-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
t0=$(date +%s)
echo "== debootstrap bookworm minbase + python3 into $ROOT (about a minute)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; die "debootstrap failed (log $ROOT.log)"; }
rm -f "$ROOT.log"
# Smaller image: no package lists, caches, docs or locales (apt-get update restores lists).
rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/debconf/*-old \
  "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/var/log/*.log
find "$ROOT"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
printf 'deb %s bookworm main\n' "$MIRROR" >"$ROOT/etc/apt/sources.list"
rm -f "$ROOT"/etc/apt/sources.list.d/*.sources

tar -C "$ROOT" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "== built $TAG in $(( $(date +%s) - t0 )) s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%d MB", $1/1e6}'))" >&2
