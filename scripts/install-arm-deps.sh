#!/usr/bin/env bash
# The aarch64 cross build's packages (Debian multiarch): the cross compiler, the arm64 builds of
# the libraries libminfer links, and qemu-user to run the result on an x86-64 machine.
# Idempotent: skips what is present. Used by `make arm-deps` and .ci/run.
# --download-only: fetch the missing packages into apt's cache and install nothing (.ci/run does
# this beside the x86-64 compile; the install later takes them from the cache).
set -euo pipefail
download_only=() verb=installing
case "${1:-}" in
  --download-only) download_only=(--download-only) verb=downloading ;;
  "") ;;
  *) echo "usage: scripts/install-arm-deps.sh [--download-only]" >&2; exit 2 ;;
esac
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
  updated=0
fi
pkgs=(g++-aarch64-linux-gnu qemu-user libopenblas-openmp-dev:arm64 liblapacke-dev:arm64
      libfmt-dev:arm64 libutf8proc-dev:arm64 libgomp1:arm64 libc6:arm64 nlohmann-json3-dev
      doctest-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "arm deps: all present"
  exit 0
fi
echo "arm deps: $verb ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  "${download_only[@]}" "${missing[@]}"
