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
#   --shards K            bootstrap a sharded cluster pre-split into K shards (default 0:
#                         one group); --replicas R replicas a shard (default 3),
#                         --down-after S seconds down before a node's replicas are
#                         re-created elsewhere (default 30)
#   --tls DIR             mutual TLS: certificates from `kvstore certs init DIR` (made when
#                         missing, valid for the VMs' addresses); each VM gets its own node
#                         certificate and key on a small read-only disk; clients then use
#                         --cacert DIR/ca.pem --cert DIR/admin.pem --key DIR/admin-key.pem
#   --image TAG           container image (default kvstore:latest)
#   --no-build            use the image and guest disk as they are
#   --timeout S           seconds to wait for a leader (default 900); --no-wait skips it
# Environment: KVSTORE_DEPLOY_CACHE (cache dir), KVSTORE_VM_IMAGES (where the VM disks,
# kernels and consoles live; default /var/lib/libvirt/images/kvstore, which libvirt's QEMU
# user can read wherever the clone is), KVSTORE_VM_PREFIX (domain names, default
# kvstore-vm), KVSTORE_VM_NET (libvirt network, default kvstore-net), KVSTORE_VM_BRIDGE
# (default virbr-kvs), KVSTORE_VM_SUBNET (first three octets, default 10.37.0), PYTHON
# (the host Python that waits for a leader; default: the clone's .venv, which `up` creates
# and fills with `pip install -e .` as deploy/local-cluster.sh does when it is missing).
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
IMAGES=${KVSTORE_VM_IMAGES:-/var/lib/libvirt/images/kvstore}
DISKS=$IMAGES/$PREFIX
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
PY=""
py_ok() {  # py_ok PYTHON: it can import the client from this clone (grpc and all)
  PYTHONPATH="$REPO" "$1" -c 'import kvstore.client, grpc' >/dev/null 2>&1
}
find_python() {  # sets PY, making the clone's .venv when needed; dies saying why
  [ -z "$PY" ] || return 0
  if [ -n "${PYTHON:-}" ]; then
    py_ok "$PYTHON" || die "PYTHON=$PYTHON cannot import kvstore's client (grpc): point PYTHON at a venv with kvstore installed, or unset it to let vm.sh make $REPO/.venv"
    PY=$PYTHON; return 0
  fi
  local venv=$REPO/.venv
  if [ -x "$venv/bin/python" ] && py_ok "$venv/bin/python"; then PY=$venv/bin/python; return 0; fi
  command -v python3 >/dev/null || die "no python3 on the host (needed to wait for a leader): apt-get install python3-venv python3-pip, or set PYTHON"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 is $(python3 -V 2>&1 | cut -d' ' -f2); kvstore needs 3.11 or newer: set PYTHON to one"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv (the host side: waits for a leader, and gives you the kvstore CLI)"
    python3 -m venv "$venv" >/dev/null 2>&1 || die "python3 -m venv failed: apt-get install python3-venv"
  fi
  log "installing kvstore into $venv"
  "$venv/bin/python" -m pip install -q -e "$REPO" >"$CACHE/venv-install.log" 2>&1 \
    || { tail -5 "$CACHE/venv-install.log" >&2; die "pip install -e $REPO failed (log $CACHE/venv-install.log)"; }
  py_ok "$venv/bin/python" || die "$venv still cannot import kvstore.client after pip install"
  PY=$venv/bin/python
}
cluster_status() {  # cluster_status TLS_DIR ENDPOINTS [--wait S]: 0 leaders, 3 none, else broken
  local tls=$1; shift
  find_python
  [ -z "$tls" ] || set -- "$@" --cacert "$tls/ca.pem" --cert "$tls/admin.pem" --key "$tls/admin-key.pem"
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$HERE/cluster-status.py" "$@"
}
qemu_user() {  # the user libvirt runs QEMU as (qemu.conf `user`, Debian: libvirt-qemu)
  local u
  u=$(sed -n 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' /etc/libvirt/qemu.conf 2>/dev/null | tail -1)
  [ -n "$u" ] || { id -u libvirt-qemu >/dev/null 2>&1 && u=libvirt-qemu || u=root; }
  echo "$u"
}
readable_by_qemu() {  # readable_by_qemu FILE: QEMU's user can reach and read it
  local u; u=$(qemu_user)
  [ "$u" = root ] || [ "$u" = "+0" ] && return 0
  command -v setpriv >/dev/null || return 0
  setpriv --reuid="$u" --regid="$(id -g "$u")" --clear-groups test -r "$1"
}
publish_guest() {  # the guest disk, kernel and initrd, copied under $IMAGES by content
  local sum; sum=$(sha256sum "$GUEST/disk.ok" | cut -c1-12)
  BASE=$IMAGES/base-$sum.qcow2; KERNEL=$IMAGES/vmlinuz-$sum; INITRD=$IMAGES/initrd-$sum.img
  mkdir -p "$IMAGES"; chmod 0755 "$IMAGES"
  if [ ! -f "$BASE" ]; then
    log "copying the guest disk to $IMAGES (where libvirt's QEMU can read it)"
    cp "$GUEST/vmlinuz" "$KERNEL"; cp "$GUEST/initrd.img" "$INITRD"
    cp "$GUEST/base.qcow2" "$BASE.new" && mv -f "$BASE.new" "$BASE"
    chmod 0644 "$BASE" "$KERNEL" "$INITRD"
  fi
  # Older bases that no overlay uses any more (overlays name theirs by absolute path).
  local f used s
  used=$(for o in "$IMAGES"/*/*.qcow2; do
    if [ -f "$o" ]; then qemu-img info -U "$o" 2>/dev/null | sed -n 's/^backing file: //p'; fi
  done | sort -u)
  for f in "$IMAGES"/base-*.qcow2; do
    [ "$f" = "$BASE" ] || grep -qxF "$f" <<<"$used" || { s=${f#"$IMAGES"/base-}; s=${s%.qcow2}; rm -f "$f" "$IMAGES/vmlinuz-$s" "$IMAGES/initrd-$s.img"; }
  done
  for f in "$BASE" "$KERNEL" "$INITRD"; do
    readable_by_qemu "$f" || die "libvirt runs QEMU as $(qemu_user), which cannot read $f: set KVSTORE_VM_IMAGES to a directory every parent of which it can enter (default /var/lib/libvirt/images/kvstore)"
  done
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
  local shards=0 replicas=3 down_after=30 tls=""
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
      --shards) shards=$2; shift ;;
      --replicas) replicas=$2; shift ;;
      --down-after) down_after=$2; shift ;;
      --tls) tls=$2; shift ;;
      --image) image=$2; shift ;;
      --no-build) build=0 ;;
      --no-wait) wait=0 ;;
      --timeout) timeout=$2; shift ;;
      *) die "up: unknown option $1 (see: bash deploy/vm.sh --help)" ;;
    esac
    shift
  done
  [[ "$shards" =~ ^[0-9]+$ ]] || die "up: --shards wants a number, got '$shards'"
  for n in "$vms" "$memory" "$cpus" "$tick_ms" "$election" "$heartbeat" "$timeout" "$replicas" "$down_after"; do
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || die "up: expected a positive number, got '$n'"
  done
  [ "$vms" -le 200 ] || die "up: at most 200 VMs on one /24"
  prereqs
  # Fail before minutes of building, not after: the host side must be able to wait.
  [ "$wait" = 0 ] && [ -z "$tls" ] || find_python
  [ -z "$tls" ] || command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing: apt-get install e2fsprogs"
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
  publish_guest
  mkdir -p "$DISKS"; chmod 0755 "$DISKS"

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

  local shard_args=""
  [ "$shards" = 0 ] || shard_args=" kvstore.shards=$shards kvstore.replicas=$replicas kvstore.down_after=$down_after"
  if [ -n "$tls" ]; then
    mkdir -p "$tls"; tls=$(cd "$tls" && pwd)
    local ips; ips=$(for i in $(seq 1 "$vms"); do echo "$SUBNET.$((10 + i))"; done | paste -sd,)
    PYTHONPATH="$REPO" "$PY" -m kvstore.cli certs init "$tls" --nodes "$((first_id + vms - 1))" --hosts "$ips" >/dev/null \
      || die "kvstore certs init $tls failed"
  fi
  local name disk xml cluster_id id tls_args certs_xml
  cluster_id=${KVSTORE_CLUSTER_ID:-$PREFIX}
  for i in $(seq 1 "$vms"); do
    name=$PREFIX$i; ip=$SUBNET.$((10 + i)); disk=$DISKS/$name.qcow2; xml=$STATE/$name.xml
    id=$((first_id + i - 1)); tls_args=""; certs_xml=""
    if [ -n "$tls" ]; then
      # The node's own certificate and key only, owned by the container's user (10001).
      tls_args=" kvstore.cert_file=/certs/node-$id.pem kvstore.key_file=/certs/node-$id-key.pem kvstore.trusted_ca_file=/certs/ca.pem kvstore.client_cert_auth=true kvstore.peer_cert_file=/certs/node-$id.pem kvstore.peer_key_file=/certs/node-$id-key.pem kvstore.peer_trusted_ca_file=/certs/ca.pem"
      certs_xml="<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$DISKS/$name-certs.img'/><target dev='vdb' bus='virtio'/><readonly/></disk>"
    fi
    if ! $V dominfo "$name" >/dev/null 2>&1; then
      rm -f "$disk" "$DISKS/$name.serial.log" "$DISKS/$name-certs.img"
      qemu-img create -q -f qcow2 -b "$BASE" -F qcow2 "$disk"
      if [ -n "$tls" ]; then
        local cd; cd=$(mktemp -d)
        for f in ca.pem "node-$id.pem" "node-$id-key.pem"; do
          [ -f "$tls/$f" ] || { rm -rf "$cd"; die "$tls/$f is missing"; }
          install -o 10001 -g 10001 -m 0400 "$tls/$f" "$cd/$f"
        done
        truncate -s 4M "$DISKS/$name-certs.img"
        mkfs.ext4 -q -F -d "$cd" "$DISKS/$name-certs.img" && rm -rf "$cd" || die "could not make the certificate disk of $name"
      fi
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
    <kernel>$KERNEL</kernel>
    <initrd>$INITRD</initrd>
    <cmdline>console=ttyS0 root=/dev/vda rw panic=-1 quiet systemd.show_status=false$init_arg kvstore.name=$name kvstore.ip=$ip/24 kvstore.id=$id kvstore.listen=$ip:$PORT kvstore.peers=$peers kvstore.cluster_id=$cluster_id kvstore.metrics_port=$METRICS_PORT kvstore.tick_ms=$tick_ms kvstore.election_ticks=$election kvstore.heartbeat_ticks=$heartbeat$shard_args$tls_args</cmdline>
  </os>
  <features>$features</features>
  $cpu_xml
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='$disk'/><target dev='vda' bus='virtio'/>
    </disk>
    $certs_xml
    <interface type='network'><source network='$NET'/><model type='virtio'/></interface>
    <serial type='file'><source path='$DISKS/$name.serial.log' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
      $V define "$xml" >/dev/null || die "could not define domain $name"
    fi
    if [ "$($V domstate "$name")" != running ]; then
      $V start "$name" >/dev/null || die "could not start $name (see $DISKS/$name.serial.log)"
      log "started $name ($ip, domain type $accel)"
    fi
  done
  {
    echo "VMS=$vms"
    echo "ENDPOINTS=$endpoints"
    echo "PEERS=$peers"
    echo "ACCEL=$accel"
    echo "TLS=$tls"
  } >"$STATE/config.env"

  if [ "$wait" = 1 ]; then
    log "waiting for the cluster to elect a leader (guests boot in ~30 s, the nodes then start under emulation)"
    local rc=0
    cluster_status "$tls" "$endpoints" --wait "$timeout" || rc=$?
    if [ "$rc" = 3 ]; then
      for i in $(seq 1 "$vms"); do
        echo "--- $PREFIX$i console (last lines):" >&2
        tail -5 "$DISKS/$PREFIX$i.serial.log" 2>/dev/null | tr -d '\r' >&2 || true
      done
      die "no leader after $timeout s (consoles: $DISKS/*.serial.log)"
    elif [ "$rc" != 0 ]; then
      die "the leader check ($PY deploy/cluster-status.py) failed with exit $rc (see above); the VMs run: 'bash deploy/vm.sh status' or 'down'"
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
  local flags=""
  [ -z "${TLS:-}" ] || flags=" --cacert $TLS/ca.pem --cert $TLS/admin.pem --key $TLS/admin-key.pem"
  echo "try:       .venv/bin/kvstore status --endpoints $ENDPOINTS$flags"
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
  cluster_status "${TLS:-}" "$ENDPOINTS"
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
  rm -rf "$STATE" "$DISKS"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  status) shift; cmd_status "$@" ;;
  down) shift; cmd_down "$@" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
