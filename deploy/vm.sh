#!/usr/bin/env bash
# kvstore on libvirt VMs: one podman container per guest, guests on an isolated network.
#
#   bash deploy/vm.sh up [--vms 3] [--memory MB] [--cpus N] [options]
#   bash deploy/vm.sh status
#   bash deploy/vm.sh down
#
# `up` builds the container image on the host (deploy/build-image.sh) and a guest disk with
# it loaded (deploy/build-guest-image.sh; both cached in deploy/.cache), defines an isolated
# libvirt network and N domains (type kvm where hardware virtualization works, else qemu),
# boots them, each guest starts its kvstore container with the other VMs as peers, and waits
# until every consensus group has a leader; then it prints the endpoints. Running `up`
# again keeps what already runs. `down` destroys and undefines everything `up` made and
# stops the libvirt daemons it started (the built images stay cached).
#
# up options:
#   --vms N               number of VMs (default 3)
#   --memory MB           guest memory (default 512)
#   --cpus N              guest vCPUs (default 1)
#   --tick-ms MS          node tick (default 100; guests run 25-30x slower than the host
#   --election-ticks N    election timeout in ticks (default 50)       under emulation)
#   --heartbeat-ticks N   heartbeat interval in ticks (default 5)
#   --host-peers LIST     ID=HOST:PORT,... nodes outside the VMs that are members too; VM
#                         node ids then start after the largest of them
#   --accel auto|kvm|qemu domain type (default auto: kvm only with vmx/svm and /dev/kvm)
#   --guest-init minimal|systemd   the guest's PID 1 (default minimal: a shell script,
#                         no systemd or udev to start under emulation; systemd works too)
#   --image TAG           container image (default kvstore:latest)
#   --no-build            use the image and guest disk as they are
#   --timeout S           seconds to wait for a leader (default 900); --no-wait skips it
# Environment: KVSTORE_DEPLOY_CACHE (cache dir), KVSTORE_VM_PREFIX (domain names, default
# kvstore-vm), KVSTORE_VM_NET (libvirt network, default kvstore-net), KVSTORE_VM_BRIDGE
# (default virbr-kvs), KVSTORE_VM_SUBNET (first three octets, default 10.37.0), PYTHON.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${KVSTORE_DEPLOY_CACHE:-$HERE/.cache}
PREFIX=${KVSTORE_VM_PREFIX:-kvstore-vm}
NET=${KVSTORE_VM_NET:-kvstore-net}
BRIDGE=${KVSTORE_VM_BRIDGE:-virbr-kvs}
SUBNET=${KVSTORE_VM_SUBNET:-10.37.0}
STATE=$CACHE/vm/$PREFIX
GUEST=$CACHE/guest
PORT=7001
METRICS_PORT=9100
V="virsh -q -c qemu:///system"

die() { echo "vm.sh: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
log() { echo "== $*" >&2; }
need() {
  local c=$1; shift
  command -v "$c" >/dev/null || die "$c is missing: apt-get install $*"
}
python_bin() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"
  else echo python3; fi
}
cluster_status() {  # cluster_status ENDPOINTS [--wait S]
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$(python_bin)" "$HERE/cluster-status.py" "$@"
}
domains() {  # names of this deployment's domains, in order
  $V list --all --name 2>/dev/null | grep -E "^${PREFIX}[0-9]+$" | sort -V || true
}
prereqs() {
  [ "$(id -u)" = 0 ] || die "needs root (libvirt system connection, debootstrap)"
  need virsh libvirt-clients
  need libvirtd libvirt-daemon-system
  need qemu-system-x86_64 qemu-system-x86
  need qemu-img qemu-utils
  mkdir -p "$STATE"
  # libvirt writes per-bridge files here even with DHCP off; the package leaves it out.
  mkdir -p /var/lib/libvirt/dnsmasq
  [ -f "$CACHE/.gitignore" ] || echo '*' >"$CACHE/.gitignore"
  local pids
  pids=$(bash "$HERE/daemons.sh" start libvirt) || die "libvirtd could not be started"
  [ -z "$pids" ] || { echo "$pids" >>"$STATE/daemons.pids"; log "started libvirt daemons (pids $pids)"; }
}

cmd_up() {
  local vms=3 memory=512 cpus=1 tick_ms=100 election=50 heartbeat=5 host_peers="" accel=auto
  local image=${KVSTORE_IMAGE:-kvstore:latest} build=1 wait=1 timeout=900 guest_init=minimal
  while [ $# -gt 0 ]; do
    case "$1" in
      --vms) vms=$2; shift ;;
      --memory) memory=$2; shift ;;
      --cpus) cpus=$2; shift ;;
      --tick-ms) tick_ms=$2; shift ;;
      --election-ticks) election=$2; shift ;;
      --heartbeat-ticks) heartbeat=$2; shift ;;
      --host-peers) host_peers=$2; shift ;;
      --accel) accel=$2; shift ;;
      --guest-init) guest_init=$2; shift ;;
      --image) image=$2; shift ;;
      --no-build) build=0 ;;
      --no-wait) wait=0 ;;
      --timeout) timeout=$2; shift ;;
      *) die "up: unknown option $1 (see: bash deploy/vm.sh --help)" ;;
    esac
    shift
  done
  for n in "$vms" "$memory" "$cpus" "$tick_ms" "$election" "$heartbeat" "$timeout"; do
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || die "up: expected a positive number, got '$n'"
  done
  [ "$vms" -le 200 ] || die "up: at most 200 VMs on one /24"
  prereqs
  local t0; t0=$(date +%s)

  local existing; existing=$(domains)
  if [ -n "$existing" ]; then
    local count; count=$(echo "$existing" | wc -l)
    [ "$count" -le "$vms" ] || die "up: $count VMs of this deployment exist, asked for $vms: run 'bash deploy/vm.sh down' first"
    log "VMs already defined ($(echo "$existing" | paste -sd' ')): keeping them and their guest disk"
  elif [ "$build" = 1 ]; then
    need docker docker.io
    need debootstrap debootstrap
    local pids
    pids=$(bash "$HERE/daemons.sh" start docker) || die "no docker engine (needed to build the image)"
    [ -z "$pids" ] || { echo "$pids" >>"$STATE/daemons.pids"; log "started dockerd (pid $pids)"; }
    bash "$HERE/build-image.sh" "$image"
    bash "$HERE/build-guest-image.sh" --image "$image"
  fi
  [ -f "$GUEST/base.qcow2" ] || die "no guest disk at $GUEST/base.qcow2 (run without --no-build)"

  if [ "$accel" = auto ]; then
    if [ -r /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; else accel=qemu; fi
  fi
  case "$accel" in kvm|qemu) ;; *) die "up: --accel must be auto, kvm or qemu" ;; esac
  local init_arg
  case "$guest_init" in
    minimal) init_arg=" init=/usr/local/sbin/kvstore-init" ;;
    systemd) init_arg="" ;;
    *) die "up: --guest-init must be minimal or systemd" ;;
  esac

  # Isolated network: a bridge with the host at .1, no NAT, no DHCP or DNS (static guest IPs).
  if ! $V net-info "$NET" >/dev/null 2>&1; then
    cat >"$STATE/net.xml" <<EOF
<network>
  <name>$NET</name>
  <bridge name='$BRIDGE' stp='off' delay='0'/>
  <dns enable='no'/>
  <ip address='$SUBNET.1' netmask='255.255.255.0'/>
</network>
EOF
    $V net-define "$STATE/net.xml" >/dev/null || die "could not define network $NET"
  fi
  [[ "$($V net-info "$NET")" =~ Active:\ *yes ]] || $V net-start "$NET" >/dev/null \
    || die "could not start network $NET (subnet $SUBNET.0/24 or bridge $BRIDGE in use? set KVSTORE_VM_SUBNET / KVSTORE_VM_BRIDGE)"

  # Members: the host peers first, then one node per VM.
  local first_id=1 p id
  if [ -n "$host_peers" ]; then
    for p in ${host_peers//,/ }; do
      id=${p%%=*}
      [[ "$id" =~ ^[0-9]+$ ]] && [[ "$p" == *=*:* ]] || die "up: --host-peers wants ID=HOST:PORT,..., got '$p'"
      [ "$id" -lt "$first_id" ] || first_id=$((id + 1))
    done
  fi
  local peers=$host_peers endpoints="" i ip
  for i in $(seq 1 "$vms"); do
    ip=$SUBNET.$((10 + i))
    peers+="${peers:+,}$((first_id + i - 1))=$ip:$PORT"
    endpoints+="${endpoints:+,}$ip:$PORT"
  done

  local name disk xml cluster_id
  cluster_id=${KVSTORE_CLUSTER_ID:-$PREFIX}
  for i in $(seq 1 "$vms"); do
    name=$PREFIX$i; ip=$SUBNET.$((10 + i)); disk=$STATE/$name.qcow2; xml=$STATE/$name.xml
    if ! $V dominfo "$name" >/dev/null 2>&1; then
      rm -f "$disk" "$STATE/$name.serial.log"
      qemu-img create -q -f qcow2 -b "$GUEST/base.qcow2" -F qcow2 "$disk"
      local cpu_xml features
      if [ "$accel" = kvm ]; then
        cpu_xml="<cpu mode='host-passthrough'/>"; features="<acpi/><apic/>"
      else
        cpu_xml="<cpu mode='maximum'/>"; features="<acpi/><apic/><tcg><tb-cache unit='MiB'>128</tb-cache></tcg>"
      fi
      # The node's settings travel on the kernel command line (kvstore.<name>=<value> becomes
      # KVSTORE_<NAME> in the container; see deploy/guest/kvstore-node).
      cat >"$xml" <<EOF
<domain type='$accel'>
  <name>$name</name>
  <memory unit='MiB'>$memory</memory>
  <vcpu>$cpus</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST/vmlinuz</kernel>
    <initrd>$GUEST/initrd.img</initrd>
    <cmdline>console=ttyS0 root=/dev/vda rw panic=-1 quiet systemd.show_status=false$init_arg kvstore.name=$name kvstore.ip=$ip/24 kvstore.id=$((first_id + i - 1)) kvstore.listen=$ip:$PORT kvstore.peers=$peers kvstore.cluster_id=$cluster_id kvstore.metrics_port=$METRICS_PORT kvstore.tick_ms=$tick_ms kvstore.election_ticks=$election kvstore.heartbeat_ticks=$heartbeat</cmdline>
  </os>
  <features>$features</features>
  $cpu_xml
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='$disk'/><target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'><source network='$NET'/><model type='virtio'/></interface>
    <serial type='file'><source path='$STATE/$name.serial.log' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
      $V define "$xml" >/dev/null || die "could not define domain $name"
    fi
    if [ "$($V domstate "$name")" != running ]; then
      $V start "$name" >/dev/null || die "could not start $name (see $STATE/$name.serial.log)"
      log "started $name ($ip, domain type $accel)"
    fi
  done
  {
    echo "VMS=$vms"
    echo "ENDPOINTS=$endpoints"
    echo "PEERS=$peers"
    echo "ACCEL=$accel"
  } >"$STATE/config.env"

  if [ "$wait" = 1 ]; then
    log "waiting for the cluster to elect a leader (guests boot in ~30 s, the nodes then start under emulation)"
    if ! cluster_status "$endpoints" --wait "$timeout"; then
      for i in $(seq 1 "$vms"); do
        echo "--- $PREFIX$i console (last lines):" >&2
        tail -5 "$STATE/$PREFIX$i.serial.log" 2>/dev/null | tr -d '\r' >&2 || true
      done
      die "no leader after $timeout s (consoles: $STATE/*.serial.log)"
    fi
  fi
  log "up in $(( $(date +%s) - t0 )) s"
  print_endpoints
}

print_endpoints() {
  # shellcheck disable=SC1091
  . "$STATE/config.env"
  echo "endpoints: $ENDPOINTS"
  echo "metrics:   $(echo "$ENDPOINTS" | sed "s/:$PORT/:$METRICS_PORT/g; s#\([^,]*\)#http://\1/metrics#g")"
  echo "try:       kvstore status --endpoints $ENDPOINTS"
}

cmd_status() {
  [ "$(id -u)" = 0 ] || die "needs root"
  virsh -c qemu:///system version >/dev/null 2>&1 || { echo "libvirtd is not running: nothing is up"; return 3; }
  local ds; ds=$(domains)
  [ -n "$ds" ] || { echo "no VMs ($PREFIX*) defined"; return 3; }
  local d
  for d in $ds; do printf '%-16s %s\n' "$d" "$($V domstate "$d")"; done
  [ -f "$STATE/config.env" ] || return 0
  print_endpoints
  # shellcheck disable=SC1091
  . "$STATE/config.env"
  cluster_status "$ENDPOINTS"
}

cmd_down() {
  [ "$(id -u)" = 0 ] || die "needs root"
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    local d
    for d in $(domains); do
      $V destroy "$d" >/dev/null 2>&1 || true
      $V undefine "$d" >/dev/null && log "removed $d"
    done
    if $V net-info "$NET" >/dev/null 2>&1; then
      $V net-destroy "$NET" >/dev/null 2>&1 || true
      $V net-undefine "$NET" >/dev/null && log "removed network $NET"
    fi
  fi
  if [ -f "$STATE/daemons.pids" ]; then
    # shellcheck disable=SC2046
    bash "$HERE/daemons.sh" stop $(cat "$STATE/daemons.pids")
    log "stopped the daemons vm.sh started ($(paste -sd' ' "$STATE/daemons.pids"))"
  fi
  rm -rf "$STATE"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  status) shift; cmd_status "$@" ;;
  down) shift; cmd_down "$@" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
