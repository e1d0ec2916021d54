#!/usr/bin/env bash
# aarch64: cross-build the library, the doctest unit suite, the C API test and the generation
# example with Debian's
# cross toolchain and arm64 OpenBLAS (multiarch), run them under qemu-user, and measure the
# footprint of a static program that runs SmolLM2 int4 through the C API (docs/capi.md).
# Needs the x86-64 build first (the C test compares with its run-model, the footprint run with
# its compress). Usage: scripts/ci-arm.sh   (from the repository root; MAKEFLAGS for -j)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-arm-deps.sh
T=aarch64-linux-gnu
# Function and data sections: the static program keeps only what it calls (--gc-sections).
# The library and the tests link arm64 libfmt.so (multiarch); the static program, which has no
# static libfmt to link (Debian ships none), gets fmt's compiled part from capi/static/fmt.cpp
# (fmt's header-only mode in every object instead cost about 3 s of compile time per object).
ARM=(BUILD=build-arm CXX=$T-g++ CC=$T-gcc ARCH=-march=armv8-a OPTLEVEL=-O2
     OPENBLAS_DIR=/usr/lib/$T/openblas-openmp
     "EXTRA_CXXFLAGS=-ffunction-sections -fdata-sections")
# No `-L /usr/$T`: that sysroot's dynamic loader (libc6-arm64-cross) is an older build than the
# libc.so.6 it then finds through multiarch (libc6:arm64, pulled in by the arm64 -dev packages);
# the mismatched pair corrupts glibc's thread-stack cache and a second pthread_create spins
# forever. The multiarch loader and libc come from one package.
QEMU=(qemu-aarch64)
t0=$(date +%s)
make "${ARM[@]}" lib build-arm/bin/test-capi unit-tests
# A static generation program: libminfer.a and every dependency linked in, nothing to install
# (OpenBLAS contributes only the BLAS objects it uses; LAPACK is not called).
mkdir -p build-arm/obj-release/capi/static
$T-g++ -std=c++20 -O2 -march=armv8-a -ffunction-sections -fdata-sections -c capi/static/fmt.cpp \
  -o build-arm/obj-release/capi/static/fmt.o
$T-gcc -std=c11 -O2 -Iinclude examples/generate.c -o build-arm/bin/generate-static -static \
  build-arm/lib/libminfer.a build-arm/obj-release/capi/static/fmt.o -L/usr/lib/$T/openblas-openmp -lopenblas -lutf8proc \
  -lstdc++ -lgomp -lm -lpthread -Wl,--gc-sections
$T-strip -o build-arm/bin/generate-static.stripped build-arm/bin/generate-static
t1=$(date +%s)
echo "arm: cross-build $((t1 - t0)) s"

# The C API test on the tiny fixture (real models skipped: minutes each under emulation), two
# contexts from two threads included.
MINFER_BIN=build/bin MINFER_CAPI_TINY_ONLY=1 timeout 600 "${QEMU[@]}" build-arm/bin/test-capi
t2=$(date +%s)
echo "arm: test-capi under qemu $((t2 - t1)) s"

# The doctest unit suite (every format, kernel, tokenizer, reader) built for aarch64: the portable
# scalar paths where x86 runs SIMD. MINFER_TEST_QUICK: the tokenizer sweeps take the first 500
# WikiText lines, not the whole file (minutes under qemu), the format round trip runs the emulated
# CUDA backend on each format's first shape only, the quant repacked-layout and op-group sweeps
# take 4 token counts on 3 threads, the q8 sweeps and the SIMD-vs-scalar case fewer token counts
# (every format and shape). Not in the aarch64 unit binary (Makefile UNIT_TEST_SRC): the training
# tests (test_train_*.cpp, test_cuda_emu_train.cpp; train/ is portable C++ over the CPU ops those
# kernels' own tests check here, checkpoints are safetensors, and it is not part of libminfer) and
# the CUDA emulation's own tests (test_cuda_emu.cpp: the emulation is portable C++ without SIMD,
# compared there with CPU kernels that have their own tests here; the emulated kernels are still
# built for aarch64 and run in the format round trip and the GGML block cases). Skipped under qemu
# only (docs/ci.md): a case that runs no architecture-specific code (the Jinja interpreter is
# portable C++, no SIMD) and took long under qemu (seconds of one run, qemu sharing a loaded
# machine). All of these still run natively in `make test` and under ASan + UBSan in
# `make asan-test`.
QEMU_SKIP=(
  "chat template: deep nesting and long inputs stay bounded" # 23 s: interpreter limits
)
# The suite runs as TEST_JOBS qemu processes at a time (default: every core), one per test file
# and one per case of the long files (scripts/test-shards.sh); logs under build-arm/test-logs.
skip=$(IFS=,; echo "${QEMU_SKIP[*]}")
MINFER_BIN=build/bin MINFER_TEST_QUICK=1 timeout 1800 bash scripts/test-shards.sh \
  -j "${TEST_JOBS:-$(nproc)}" --wrap "${QEMU[*]}" --logs build-arm/test-logs \
  build-arm/bin/minfer-unit-tests "-tce=$skip"
t3=$(date +%s)
echo "arm: unit tests under qemu $((t3 - t2)) s"

# A small real model's greedy generation: SmolLM2 compressed to int4, the static program under
# qemu vs the same program built for x86-64; the texts must be identical.
home=${MINFER_HOME:-$HOME/.cache/minfer}
gguf=$home/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$gguf" ]; then
  int4=build/smollm2-int4
  [ -f $int4/config.json ] || build/bin/compress --model smollm2 --method int4 --out $int4
  cc -std=c11 -O2 -Iinclude examples/generate.c -o build/bin/generate-dyn -Lbuild/lib \
    -Wl,-rpath,"$PWD/build/lib" -lminfer
  prompt="The capital of France is"
  # 8 new tokens: each is a whole decode step through every layer, about 7 s under qemu; 16 took
  # ~115 s and ran no other code path.
  n_gen=8
  # f32 activations on x86 too: int4 decode takes the q8 path (8-bit activations) by default on
  # AVX2 and AVX-512 VNNI builds, which aarch64 does not have; the check is that both run the same
  # math.
  MINFER_QUANT_ACT=f32 OMP_NUM_THREADS=2 build/bin/generate-dyn $int4 "$prompt" $n_gen \
    > /tmp/minfer-gen-x86.txt
  OMP_NUM_THREADS=2 "${QEMU[@]}" build-arm/bin/generate-static $int4 "$prompt" $n_gen \
    > /tmp/minfer-gen-arm.txt 2> /tmp/minfer-gen-arm.err
  cat /tmp/minfer-gen-arm.txt /tmp/minfer-gen-arm.err
  size=$(stat -c %s build-arm/bin/generate-static.stripped)
  echo "arm: static generate program $((size / 1024)) KiB stripped; $(tail -1 /tmp/minfer-gen-arm.err)"
  if cmp -s /tmp/minfer-gen-x86.txt /tmp/minfer-gen-arm.txt; then
    echo "arm: SmolLM2 int4 greedy text identical to x86-64"
  else
    echo "arm: SmolLM2 int4 greedy text DIFFERS from x86-64:"; cat /tmp/minfer-gen-x86.txt; exit 1
  fi
else
  echo "arm: SKIPPED real-model generation ($gguf not installed)"
fi
echo "arm: total $(( $(date +%s) - t0 )) s"
