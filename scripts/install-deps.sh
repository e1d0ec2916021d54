#!/usr/bin/env bash
# Installs the Debian packages the build needs; skips what is present (idempotent).
# Usage: scripts/install-deps.sh [--build | --rest]
#   (none)   everything below (`make deps`);
#   --build  what `make` needs: compilers and libraries;
#   --rest   what only later steps need: clang with its sanitizer / libFuzzer runtimes and OpenMP
#            (`make asan-test`, `make fuzz`), Open MPI (distill's data-parallel build: the
#            Makefile looks for mpicxx on every run and rebuilds distill when it appears, so a
#            `make` before it builds distill without MPI and the next `make` with it) and pip
#            (`make models`). .ci/run installs these beside the release compile, so their
#            download and unpacking cost little wall time.
set -euo pipefail
build=(g++ make libopenblas-openmp-dev liblapacke-dev doctest-dev libfmt-dev nlohmann-json3-dev
       libutf8proc-dev libcli11-dev libzip-dev libssl-dev pkg-config)
rest=(clang libclang-rt-dev libomp-dev   # clang + its libFuzzer/sanitizer runtimes + OpenMP
      libopenmpi-dev openmpi-bin)        # data-parallel distill under mpirun (make MPI=1)
# pip runs `make models` (app/model_hub.cpp: `python3 -m pip`, else `pip`); Debian's package
# only where neither works already (a pyenv or venv pip is as good).
if ! { python3 -m pip --version || pip --version; } >/dev/null 2>&1; then rest+=(python3-pip); fi
case "${1:-}" in
  "") pkgs=("${build[@]}" "${rest[@]}") ;;
  --build) pkgs=("${build[@]}") ;;
  --rest) pkgs=("${rest[@]}") ;;
  *) echo "usage: scripts/install-deps.sh [--build | --rest]" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps${1:+ ($1)}: all present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps${1:+ ($1)}: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
