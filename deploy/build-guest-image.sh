#!/usr/bin/env bash
# Builds the VM guest disk for deploy/vm.sh: Debian bookworm (debootstrap) with a kernel,
# systemd and podman, our container image already loaded into podman's storage, and the
# units in deploy/guest/ that start one kvstore container at boot from kernel command-line
# settings. Output (in $KVSTORE_DEPLOY_CACHE/guest, default deploy/.cache/guest):
#   base.qcow2  vmlinuz  initrd.img      (direct kernel boot; one qcow2 overlay per VM)
#   bash deploy/build-guest-image.sh [--image kvstore:latest] [--force]
# Cached: the debootstrap stage is reused while the package list is unchanged; the disk is
# rebuilt only when the image id or deploy/guest/* change. Needs root, debootstrap,
# qemu-img, mkfs.ext4 and a docker engine holding the image.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KVSTORE_DEPLOY_CACHE:-$HERE/.cache}
OUT=$CACHE/guest
ROOT=$OUT/rootfs
IMAGE=${KVSTORE_IMAGE:-kvstore:latest}
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --image) IMAGE=$2; shift ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build-guest-image.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "build-guest-image.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
for c in debootstrap qemu-img mkfs.ext4 docker chroot; do
  command -v $c >/dev/null || die "$c is missing: apt-get install debootstrap qemu-utils e2fsprogs docker.io"
done
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE not found (build it: bash deploy/build-image.sh)"
mkdir -p "$OUT"
[ -f "$CACHE/.gitignore" ] || echo '*' >"$CACHE/.gitignore"

MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# netavark is named explicitly: debootstrap does not resolve podman's virtual dependency.
PKGS=systemd-sysv,udev,kmod,iproute2,linux-image-amd64,podman,netavark,aardvark-dns,crun,conmon,iptables
STAGE1="$PKGS v1"

mounted=()
unmount_under() {  # everything mounted at or below $1, deepest first (podman leaves its own)
  awk -v r="$1" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
cleanup() {
  [ ${#mounted[@]} -eq 0 ] || unmount_under "$ROOT"
}
trap cleanup EXIT

# --- stage 1: root filesystem with kernel and podman (slow: ~2-3 min, cached) ---------------
if [ "$FORCE" = 1 ] || [ "$(cat "$OUT/rootfs.ok" 2>/dev/null)" != "$STAGE1" ]; then
  [ ! -d "$ROOT" ] || unmount_under "$ROOT"
  rm -rf "$ROOT" "$OUT/rootfs.ok" "$OUT/disk.ok"
  log "debootstrap guest root filesystem (kernel, systemd, podman; about 2-3 minutes)"
  t0=$(date +%s)
  debootstrap --variant=minbase --include="$PKGS" bookworm "$ROOT" "$MIRROR" \
    >"$OUT/debootstrap.log" 2>&1 || { tail -20 "$OUT/debootstrap.log" >&2; die "debootstrap failed (log $OUT/debootstrap.log)"; }
  rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*
  echo kvstore-guest >"$ROOT/etc/hostname"
  printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"
  echo '/dev/vda / ext4 rw,relatime 0 1' >"$ROOT/etc/fstab"
  chroot "$ROOT" passwd -d root >/dev/null
  # serial-getty would vhangup ttyS0 and eat the console log; timers only cost CPU here.
  for u in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
           e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
           systemd-pstore.service podman-auto-update.timer podman-restart.service; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
  done
  # A 6.5 MB initrd instead of 36 MB: only what a virtio disk root needs.
  sed -i 's/^MODULES=.*/MODULES=list/' "$ROOT/etc/initramfs-tools/initramfs.conf"
  printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >>"$ROOT/etc/initramfs-tools/modules"
  chroot "$ROOT" update-initramfs -u -k all >/dev/null 2>&1
  echo "$STAGE1" >"$OUT/rootfs.ok"
  log "guest root filesystem ready in $(( $(date +%s) - t0 )) s ($(du -sh "$ROOT" | cut -f1))"
fi

# --- stage 2: our files + the container image, then the disk (fast, per image) --------------
image_id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
files_sum=$(cat "$HERE"/guest/* | sha256sum | cut -c1-16)
want="$image_id $IMAGE $files_sum"
if [ "$FORCE" = 0 ] && [ "$(cat "$OUT/disk.ok" 2>/dev/null)" = "$want" ] && [ -f "$OUT/base.qcow2" ]; then
  log "guest disk up to date ($OUT/base.qcow2)"
  exit 0
fi
# Running guests are not in the way: vm.sh boots copies of this disk (named by content,
# under libvirt's image directory), never the file rebuilt here.
t0=$(date +%s)
install -m 0755 "$HERE/guest/kvstore-guest-net" "$ROOT/usr/local/sbin/kvstore-guest-net"
install -m 0755 "$HERE/guest/kvstore-node" "$ROOT/usr/local/sbin/kvstore-node"
install -m 0755 "$HERE/guest/kvstore-init" "$ROOT/usr/local/sbin/kvstore-init"
install -m 0644 "$HERE/guest/kvstore-guest-net.service" "$HERE/guest/kvstore-node.service" \
  "$ROOT/etc/systemd/system/"
install -d "$ROOT/etc/containers"
install -m 0644 "$HERE/guest/containers.conf" "$ROOT/etc/containers/containers.conf"
for u in kvstore-guest-net kvstore-node; do
  ln -sf "/etc/systemd/system/$u.service" "$ROOT/etc/systemd/system/multi-user.target.wants/$u.service"
done
echo "$IMAGE" >"$ROOT/etc/kvstore-image"

log "loading $IMAGE into the guest's podman storage"
unmount_under "$ROOT"
rm -rf "$ROOT/var/lib/containers/storage" "$ROOT/run/containers"
# The guest root must be a mount point: podman's layer extraction remounts / private.
mount --bind "$ROOT" "$ROOT"
mounted+=("$ROOT")
for m in proc sys dev run tmp; do
  case $m in
    proc) mount -t proc proc "$ROOT/proc" ;;
    sys) mount -t sysfs sys "$ROOT/sys" ;;
    dev) mount --bind /dev "$ROOT/dev" ;;
    run|tmp) mount -t tmpfs tmpfs "$ROOT/$m" ;;
  esac
  mounted+=("$ROOT/$m")
done
docker save "$IMAGE" >"$ROOT/tmp/image.tar"
chroot "$ROOT" podman --cgroup-manager=cgroupfs --events-backend=file load -q -i /tmp/image.tar >/dev/null \
  || die "podman load inside the guest root failed"
chroot "$ROOT" podman --cgroup-manager=cgroupfs --events-backend=file image exists "$IMAGE" \
  || die "image $IMAGE missing in the guest after load"
cleanup; mounted=()

log "making the disk image"
rm -f "$OUT/root.raw" "$OUT/base.qcow2.new"
truncate -s "${KVSTORE_GUEST_DISK_GB:-4}G" "$OUT/root.raw"
mkfs.ext4 -q -F -L kvstore-root -d "$ROOT" "$OUT/root.raw"
qemu-img convert -O qcow2 "$OUT/root.raw" "$OUT/base.qcow2.new"
rm -f "$OUT/root.raw"
mv -f "$OUT/base.qcow2.new" "$OUT/base.qcow2"
cp "$(ls "$ROOT"/boot/vmlinuz-* | tail -1)" "$OUT/vmlinuz"
cp "$(ls "$ROOT"/boot/initrd.img-* | tail -1)" "$OUT/initrd.img"
echo "$want" >"$OUT/disk.ok"
log "guest disk ready in $(( $(date +%s) - t0 )) s ($(du -h "$OUT/base.qcow2" | cut -f1))"
