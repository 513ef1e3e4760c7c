#!/usr/bin/env bash
# Starts the Docker engine or libvirt by hand where no init system does (containers, CI).
#   bash deploy/daemons.sh start docker|libvirt   prints the pids it started (none if running)
#   bash deploy/daemons.sh stop PID...            stops daemons started above, by pid
# Exits non-zero with the reason when the daemon is not installed or does not come up.
set -euo pipefail
die() { echo "daemons.sh: $*" >&2; exit 1; }
wait_for() {  # wait_for SECONDS CMD...: poll until CMD succeeds
  local n=$(( $1 * 10 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
LOGDIR=${KVSTORE_DAEMON_LOGS:-/tmp}

case "${1:-}" in
  start)
    [ "$(id -u)" = 0 ] || die "starting daemons needs root"
    case "${2:-}" in
      docker)
        docker info >/dev/null 2>&1 && exit 0
        command -v dockerd >/dev/null || die "dockerd is missing: apt-get install docker.io docker-compose"
        dockerd >"$LOGDIR/kvstore-dockerd.log" 2>&1 &
        pid=$!
        wait_for 60 docker info || { tail -5 "$LOGDIR/kvstore-dockerd.log" >&2; die "dockerd did not come up (log $LOGDIR/kvstore-dockerd.log)"; }
        echo "$pid" ;;
      libvirt)
        virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
        command -v libvirtd >/dev/null || die "libvirtd is missing: apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils"
        pids=()
        if ! { [ -f /run/virtlogd.pid ] && kill -0 "$(cat /run/virtlogd.pid)" 2>/dev/null; }; then
          virtlogd -d && wait_for 10 test -s /run/virtlogd.pid && pids+=("$(cat /run/virtlogd.pid)")
        fi
        libvirtd -d
        wait_for 30 virsh -c qemu:///system version || die "libvirtd did not come up"
        pids+=("$(cat /run/libvirtd.pid)")
        echo "${pids[*]}" ;;
      *) die "usage: daemons.sh start docker|libvirt" ;;
    esac ;;
  stop)
    shift
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for p in "$@"; do wait_for 30 bash -c "! kill -0 $p" || kill -9 "$p" 2>/dev/null || true; done ;;
  *) sed -n '2,5p' "$0"; exit 2 ;;
esac
