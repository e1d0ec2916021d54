#!/usr/bin/env bash
# The house plan's arrows (docs/architecture.md): each folder includes only the folders below it.
# Fails naming every include that points up, and any libzip / OpenSSL symbol in the core library.
# Usage: scripts/check-layers.sh [path/to/libminfer.a]   (run from the repository root)
set -u
cd "$(dirname "$0")/.."
# folder -> the project folders its files may include (besides itself)
declare -A allowed=(
  [kernels]="engine/formats kernels"
  [tokenizer]="engine/error.h engine/gguf.h engine/tensor.h tokenizer"
  [engine]="engine kernels tokenizer"
  [models]="engine kernels tokenizer models"
  [compress]="engine kernels tokenizer models compress"
  [app]="engine kernels tokenizer models compress app"
)
bad=0
for dir in "${!allowed[@]}"; do
  while IFS= read -r line; do
    file=${line%%:*}
    inc=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"${line#*:}")
    top=${inc%%/*}
    case "$top" in engine|kernels|tokenizer|models|compress|app|train|capi|include|tools|tests|bench) ;; *) continue;; esac
    ok=0
    for a in ${allowed[$dir]}; do
      [[ "$inc" == "$a" || "$inc" == "$a"/* ]] && ok=1
    done
    # kernels may include the core's format units and the small core headers they rest on
    if [ "$dir" = kernels ]; then
      case "$inc" in engine/linear.h|engine/tensor.h|engine/half.h|engine/error.h|engine/backend.h|engine/attention_check.h|engine/gguf.h) ok=1;; esac
    fi
    if [ $ok = 0 ]; then echo "layering: $file includes \"$inc\" ($dir/ may include: ${allowed[$dir]})"; bad=1; fi
  done < <(grep -rn --include='*.h' --include='*.cpp' --include='*.cu' '^#include "' "$dir" 2>/dev/null | sed -E 's/^([^:]+):[0-9]+:/\1:/')
done
lib=${1:-}
if [ -n "$lib" ]; then
  if [ ! -f "$lib" ]; then echo "layering: $lib not built"; exit 1; fi
  syms=$(nm -A "$lib" 2>/dev/null | grep -E ' [UTtDdBb] (zip_[a-z_]+|EVP_[A-Za-z_]+|SHA256[A-Za-z_]*|OPENSSL_[A-Za-z_]+|ERR_[a-z_]+)$' | head -5)
  if [ -n "$syms" ]; then echo "layering: the core library $lib uses libzip / OpenSSL:"; echo "$syms"; bad=1; fi
fi
[ $bad = 0 ] && echo "layering: ok (every include points down the house plan; core library links no libzip/OpenSSL)"
exit $bad
