#!/usr/bin/env bash
# The aarch64 cross build's packages (Debian multiarch): the cross compiler, the arm64 builds of
# the libraries libminfer links, and qemu-user to run the result on an x86-64 machine.
# Idempotent: skips what is present. Used by `make arm-deps` and .ci/run.
set -euo pipefail
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
echo "arm deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
