#!/usr/bin/env bash
# Make sure the system tools the tests use are present:
#   a Docker engine that answers, a static busybox (for the test images), and Chromium (report test).
# As root on Debian/Ubuntu, installs docker.io, busybox-static and chromium when missing and starts dockerd.
set -euo pipefail

have_static_busybox() {
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1
}

missing=()
command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || missing+=(docker.io)
have_static_busybox || missing+=(busybox-static)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-test-tools: missing ${missing[*]} and this is not root; install them (Debian package names)" >&2
    exit 1
  fi
  echo "ensure-test-tools: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-test-tools: no Docker engine answers and this is not root; start dockerd" >&2
    exit 1
  fi
  echo "ensure-test-tools: starting dockerd (log: /tmp/flare-eval-dockerd.log)" >&2
  nohup dockerd >/tmp/flare-eval-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "ensure-test-tools: dockerd did not come up; see /tmp/flare-eval-dockerd.log" >&2; exit 1; }
fi
