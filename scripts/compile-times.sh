#!/usr/bin/env bash
# CPU seconds of every object of one build compiled from scratch, slowest first (where CI's
# compile time goes; docs/ci.md). The compiler runs under /usr/bin/time through a wrapper; the
# objects go to a scratch build folder, so the working build/ trees are left alone.
#   scripts/compile-times.sh LOG [N] -- MAKE-ARGS...
# e.g. scripts/compile-times.sh /tmp/rel.log 15 -- all
#      scripts/compile-times.sh /tmp/asan.log 15 -- FUZZ=1 CXX=clang++ CC=clang fuzzers tests tools
#      scripts/compile-times.sh /tmp/arm.log 15 -- CXX=aarch64-linux-gnu-g++ ... unit-tests
# LOG gets one line per object: CPU s (user + sys), object. The scratch build folder
# (SCRATCH, default /tmp/minfer-compile-times) is removed first. MAKEFLAGS gives -j.
set -euo pipefail
log=$(realpath -m "$1")
shift
cd "$(dirname "$0")/.."
top=15
if [ "${1:-}" != "--" ]; then top=$1; shift; fi
[ "${1:-}" = "--" ] || { echo "usage: $0 LOG [N] -- MAKE-ARGS..." >&2; exit 2; }
shift
scratch=${SCRATCH:-/tmp/minfer-compile-times}
rm -rf "$scratch" && mkdir -p "$scratch/wrap"
: >"$log"
# The wrapper keeps the compiler's name (the Makefile recognises clang by it).
cxx=g++ cc=gcc args=()
for a in "$@"; do
  case "$a" in
    CXX=*) cxx=${a#CXX=} ;;
    CC=*) cc=${a#CC=} ;;
    *) args+=("$a") ;;
  esac
done
for c in "$cxx" "$cc"; do
  w=$scratch/wrap/$(basename "$c")
  cat >"$w" <<EOF
#!/usr/bin/env bash
out=-; prev=
for a in "\$@"; do [ "\$prev" = -o ] && out=\$a; prev=\$a; done
case "\$out" in *.o) exec /usr/bin/time -f "%U %S %e \$out" -a -o "$log" $(command -v "$c") "\$@" ;; esac
exec $(command -v "$c") "\$@"
EOF
  chmod +x "$w"
done
t0=$(date +%s)
make BUILD="$scratch/build" CXX="$scratch/wrap/$(basename "$cxx")" CC="$scratch/wrap/$(basename "$cc")" \
  "${args[@]}" >"$scratch/make.log" 2>&1 || { tail -20 "$scratch/make.log"; exit 1; }
wall=$(($(date +%s) - t0))
awk '{ printf "%.1f %s\n", $1 + $2, $4 }' "$log" | sed "s|$scratch/build/||" | sort -g -r -o "$log"
awk -v top="$top" -v wall=$wall '
  { sum += $1; n++; if (n <= top) printf "%7.1f s  %s\n", $1, $2 }
  END { printf "%d objects, %.0f CPU s compiling (user + sys); make took %d s wall\n", n, sum, wall }' "$log"
rm -rf "$scratch/build"
