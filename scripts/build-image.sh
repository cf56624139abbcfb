#!/usr/bin/env bash
# Build the container image from the Dockerfile with podman, on a Debian base
# made here by debootstrap: no container registry needed, only Debian's
# packages and PyPI (what CI and tests/deploy/test_container.py use).
#
#   scripts/build-image.sh [TAG]        default TAG: localhost/cosyvoice-sidecar:dev
#
# The base: bookworm minbase with python3, its venv module and pip, which is
# what the Dockerfile's two stages need of python:3.11 (a build stage that
# makes wheels, a runtime stage that makes a venv). It replaces both
# BUILD_IMAGE and RUNTIME_IMAGE through their build arguments, so the pinned
# digests stay the default for everyone with a registry. The root file system
# is cached as .tools/image-base/<key>.tar and imported into podman as
# localhost/cosyvoice-sidecar-base:<key>; the key is a hash of the suite, the
# variant and the package list, so changing any of them builds a new base.
#
# podman runs every RUN step with --isolation chroot (no cgroups needed,
# which these machines lack for runc/crun). The build stage downloads wheels
# from PyPI with the build machine's CA certificates, mounted read-only into
# the RUN steps (never committed to a layer), so a TLS-inspecting proxy works.
#
# Needs root, podman and debootstrap (make packages installs them).
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-localhost/cosyvoice-sidecar:dev}
suite=bookworm
variant=minbase
packages=(python3 python3-venv python3-pip)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key=$(printf '%s\n' "$suite" "$variant" "${packages[@]}" | sha256sum | cut -c1-16)
base=localhost/cosyvoice-sidecar-base:$suite-$key
cache=.tools/image-base/$suite-$key.tar

for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (make packages)" >&2; exit 1; }
done

if ! podman image exists "$base"; then
  if [[ ! -f $cache ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "debootstrap $suite ($variant + ${packages[*]}) into $cache" >&2
    includes=$(IFS=,; echo "${packages[*]}")
    debootstrap --variant="$variant" --include="$includes" "$suite" "$work/rootfs" "$mirror" \
      >"$work/debootstrap.log" 2>&1 || { tail -n 40 "$work/debootstrap.log" >&2; exit 1; }
    # Package archives and indexes are only debootstrap's leftovers.
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    mkdir -p "$(dirname "$cache")"
    tar --numeric-owner -C "$work/rootfs" -cf "$cache.partial" .
    mv "$cache.partial" "$cache"
  fi
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$cache" "$base" >/dev/null
fi

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
previous=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
# --layers=false: no layer cache. With it, podman 4.3 (buildah 1.28) fails the
# runtime stage's RUN --mount=...,from=build whenever the build stage comes
# entirely from the cache ("couldn't find .../merged/wheels on host to bind
# mount"); a full build takes about a minute.
podman build --isolation chroot --layers=false \
  --volume /etc/ssl/certs:/etc/ssl/certs:ro \
  --build-arg BUILD_IMAGE="$base" \
  --build-arg RUNTIME_IMAGE="$base" \
  --build-arg REVISION="$revision" \
  --tag "$tag" .
# The image this tag named before is now untagged: remove it unless in use.
current=$(podman image inspect --format '{{.Id}}' "$tag")
if [[ -n $previous && $previous != "$current" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
