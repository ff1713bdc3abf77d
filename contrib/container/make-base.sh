#!/bin/bash
# Copied from the team's shared/container tooling so that CI (which has only this repository) can build the base image.
# Build a local stand-in for the `python:3.11-slim` image from Debian bookworm with debootstrap,
# for machines that reach Debian's and PyPI's package registries but no container registry.
# Usage: make-base.sh [IMAGE]      (about 60-70 s on 2 cores; idempotent: skips if IMAGE exists)
# Needs: apt-get install -y podman runc debootstrap
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/env.sh"
IMAGE=${1:-localhost/python:3.11-slim-bookworm}
TAGS=${TAGS-"localhost/python:3.11-slim python:3.11-slim docker.io/library/python:3.11-slim"}
if [ -z "${FORCE:-}" ] && podman image exists "$IMAGE"; then echo "base image $IMAGE exists"; exit 0; fi
ROOTFS=${ROOTFS:-$PODMAN_WORK/rootfs}
MIRROR=${MIRROR:-$("$HERE/mirror.sh")}
[ -n "$MIRROR" ] || { echo "no Debian mirror found in apt's sources" >&2; exit 1; }

rm -rf "$ROOTFS"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$PODMAN_WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$PODMAN_WORK/debootstrap.log"; exit 1; }
# the same apt sources, apt configuration and extra CA certificates as this machine
rm -f "$ROOTFS/etc/apt/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && cp "$f" "$ROOTFS/etc/apt/${f#/etc/apt/}"
done
cp /etc/apt/apt.conf.d/* "$ROOTFS/etc/apt/apt.conf.d/" 2>/dev/null || true
printf 'APT::Install-Recommends "false";\n' >"$ROOTFS/etc/apt/apt.conf.d/99norecommends"
mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/pip.conf "$ROOTFS/etc/pip.conf" 2>/dev/null || true
mount -t proc proc "$ROOTFS/proc"; trap 'umount "$ROOTFS/proc" 2>/dev/null || true' EXIT
chroot "$ROOTFS" /bin/sh -ec "export DEBIAN_FRONTEND=noninteractive LC_ALL=C
  apt-get update -q
  apt-get install -y -q python3 python3-venv python3-pip python-is-python3 ca-certificates
  update-ca-certificates
  apt-get clean; rm -rf /var/lib/apt/lists/*
  rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf /usr/share/doc/* /usr/share/man/*" >"$PODMAN_WORK/chroot-apt.log" 2>&1 \
  || { tail -20 "$PODMAN_WORK/chroot-apt.log"; exit 1; }
umount "$ROOTFS/proc"; trap - EXIT
: >"$ROOTFS/etc/resolv.conf"; : >"$ROOTFS/etc/hostname"
tar --numeric-owner -C "$ROOTFS" -c . | podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
for t in $TAGS; do podman tag "$IMAGE" "$t"; done
podman run --rm --network host "$IMAGE" python3 -c 'import sys; print("base image ok, python", sys.version.split()[0])'
