#!/usr/bin/env bash
# Make sure a Docker engine answers and a static busybox exists (for the test images).
# As root on Debian/Ubuntu, installs docker.io and busybox-static when missing and starts dockerd.
set -euo pipefail

have_static_busybox() {
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1
}

if docker info >/dev/null 2>&1 && have_static_busybox; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-docker: no Docker engine answers (or no static busybox) and this is not root;" >&2
  echo "  install docker.io and busybox-static and start dockerd, or run as root" >&2
  exit 1
fi
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
have_static_busybox || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-docker: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  echo "ensure-docker: starting dockerd (log: /tmp/flare-eval-dockerd.log)" >&2
  nohup dockerd >/tmp/flare-eval-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info >/dev/null 2>&1 || { echo "ensure-docker: dockerd did not come up; see /tmp/flare-eval-dockerd.log" >&2; exit 1; }
