#!/usr/bin/env bash
# The house plan's arrows (docs/architecture.md): each folder includes only the folders below it.
# Fails naming every include that points up, any libzip / OpenSSL symbol in the core library,
# and any symbol but the C API's (minfer_*) exported by the shared library.
# Usage: scripts/check-layers.sh [path/to/libminfer.a [path/to/libminfer.so]]  (from the repo root)
set -u
cd "$(dirname "$0")/.."
# folder -> the project folders its files may include (besides itself)
declare -A allowed=(
  [kernels]="engine/formats kernels"
  [tokenizer]="engine/error.h engine/json_text.h engine/gguf.h engine/tensor.h tokenizer"
  [engine]="engine kernels tokenizer"
  [models]="engine kernels tokenizer models"
  [compress]="engine kernels tokenizer models compress"
  [train]="engine kernels tokenizer models compress train"
  [app]="engine kernels tokenizer models compress app"
  # the C API: the library below tools/, never app/ (it never downloads)
  [capi]="engine kernels tokenizer models compress capi include"
  [include]="include"
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
      case "$inc" in engine/linear.h|engine/tensor.h|engine/half.h|engine/error.h|engine/backend.h|engine/attention_check.h|engine/gguf.h|engine/thread_pool.h) ok=1;; esac
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
so=${2:-}
if [ -n "$so" ]; then
  if [ ! -f "$so" ]; then echo "layering: $so not built"; exit 1; fi
  extra=$(nm -D --defined-only "$so" | awk '{print $NF}' | sed 's/@.*//' | grep -v -E '^(minfer_[a-z0-9_]+|MINFER_0)$' | head -5)
  napi=$(nm -D --defined-only "$so" | awk '{print $NF}' | sed 's/@.*//' | grep -c -E '^minfer_')
  if [ -n "$extra" ]; then echo "layering: $so exports more than the C API:"; echo "$extra"; bad=1; fi
  if [ "$napi" -lt 20 ]; then echo "layering: $so exports only $napi minfer_* symbols"; bad=1; fi
  if readelf -d "$so" | grep -qE 'NEEDED.*(libzip|libcrypto|libssl)'; then
    echo "layering: $so links libzip / OpenSSL"; bad=1
  fi
fi
[ $bad = 0 ] && echo "layering: ok (every include points down the house plan; core library links no libzip/OpenSSL${so:+; $(basename "$so") exports only the C API})"
exit $bad
