#!/usr/bin/env bash
# Installs the Debian packages the build needs; skips what is present (idempotent).
set -euo pipefail
pkgs=(g++ make libopenblas-openmp-dev liblapacke-dev doctest-dev libfmt-dev nlohmann-json3-dev
      libutf8proc-dev libcli11-dev python3-pip libzip-dev libssl-dev pkg-config
      clang libclang-rt-dev libomp-dev   # clang + its libFuzzer/sanitizer runtimes + OpenMP: make fuzz
      libopenmpi-dev openmpi-bin)  # data-parallel distill under mpirun (make MPI=1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
