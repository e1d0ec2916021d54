# minfer build. `make` = release library + tools into build/, `make test` = whole suite.
# Variants: DEBUG=1 (-O0 -g), SANITIZE=1 (ASan + UBSan, g++). CUDA=1 adds the CUDA backend.
# `make asan-test` runs the suite under clang ASan + UBSan from the fuzz build's objects (CI).
# MPI=1 (the default when mpicxx is found) builds distill for data-parallel runs under mpirun.
# Each variant keeps its own object folder so switching never mixes objects.
# The C API (include/minfer.h, capi/) ships as build/lib/libminfer.{a,so}; `make install
# PREFIX=...` installs it with minfer.pc (docs/capi.md).

BUILD    ?= build
CXX      ?= g++
ARCH     ?= -march=native
OPTLEVEL ?= -O3
OPENBLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp

ifeq ($(FUZZ),1)
  # libFuzzer build (`make fuzz`, clang only): every object instrumented for coverage and
  # ASan + UBSan; the fuzzer's main() is linked into the harnesses only (tests/fuzz/).
  VARIANT := fuzz
  # -gline-tables-only: sanitizer reports and crash stacks keep function, file and line for every
  # frame; the full -g (types and variables, for a debugger) cost 7-12% more compile time per
  # object (docs/ci.md). `make DEBUG=1` or `make SANITIZE=1` (g++, -g) are the builds to debug in.
  OPT     := -O1 -gline-tables-only -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
  LDOPT   := -fsanitize=address,undefined
  # clang links its sanitizer runtimes statically into each executable, never into a shared
  # library: libminfer.so leaves __asan_* / __ubsan_* / __sanitizer_cov_* to the program that
  # loads it (so no --no-undefined), and a C program that loads it links with the C++ driver,
  # which adds the runtimes' C++ parts (operator new/delete, vptr checks) the library calls.
  SO_DEFS :=
  CAPI_LD  = $(CXX) -x c
else ifeq ($(SANITIZE),1)
  VARIANT := sanitize
  OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDOPT   := -fsanitize=address,undefined
else ifeq ($(DEBUG),1)
  VARIANT := debug
  OPT     := -O0 -g
  LDOPT   :=
else
  VARIANT := release
  OPT     := $(OPTLEVEL) -DNDEBUG
  LDOPT   :=
endif

SO_DEFS ?= -Wl,--no-undefined
CAPI_LD ?= $(CC)

ifeq ($(VARIANT),release)
  BINDIR := $(BUILD)/bin
else
  BINDIR := $(BUILD)/$(VARIANT)/bin
endif
# OBJBUILD: where the objects live (default: BUILD). A CUDA build can reuse the CPU build's
# objects, which are the same with and without CUDA (`make CUDA=1 BUILD=build-cuda OBJBUILD=build`).
OBJBUILD ?= $(BUILD)
OBJDIR := $(OBJBUILD)/obj-$(VARIANT)
LIBDIR := $(patsubst %/bin,%/lib,$(BINDIR))

# Library version; the soname carries the major (an ABI break bumps it).
VERSION_MAJOR := 0
VERSION       := $(VERSION_MAJOR).1.0
PREFIX  ?= /usr/local
CC      ?= cc

CPPFLAGS += -I. -Iinclude -MMD -MP
# -fPIC: the same objects make libminfer.a and libminfer.so. Hidden visibility: the shared
# library exports only what include/minfer.h marks MINFER_API (and capi/minfer.map keeps it so).
CXXFLAGS += -std=c++20 $(OPT) $(ARCH) -fopenmp -fPIC -fvisibility=hidden -fvisibility-inlines-hidden -Wall -Wextra -Werror=switch -Wno-unused-parameter -Wno-maybe-uninitialized $(EXTRA_CXXFLAGS)
# clang does not know GCC's -Wmaybe-uninitialized.
ifneq ($(findstring clang,$(CXX)),)
  CXXFLAGS += -Wno-unknown-warning-option
endif
LDFLAGS  += $(LDOPT) -fopenmp -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR)
LDLIBS   += -lopenblas -llapacke -lutf8proc -lfmt -lpthread
# Only the application layer (app/: model fetching) links libzip and OpenSSL.
APP_LIBS := -lzip -lcrypto

# libminfer: the core (engine/, kernels/, tokenizer/), models/ and compress/; libminfer-app: app/
# (fetching models, bench reports) on top of it. See docs/architecture.md for the include rules.
LIB_SRC  := $(wildcard engine/*.cpp engine/*/*.cpp kernels/cpu/*.cpp kernels/common/*.cpp tokenizer/*.cpp models/*.cpp compress/*.cpp capi/*.cpp)
APP_SRC  := $(wildcard app/*.cpp)
# train/ (backward ops, optimizer, distillation) is its own archive, libminfer-train.a: the C API
# library (libminfer.so) stays inference-only and does not grow with the training engine.
TRAIN_SRC:= $(wildcard train/*.cpp)
TOOL_SRC := $(wildcard tools/*.cpp)
TEST_SRC := $(wildcard tests/*.cpp)
BENCH_SRC:= $(wildcard bench/*.cpp)

LIB_OBJ  := $(LIB_SRC:%.cpp=$(OBJDIR)/%.o)
APP_OBJ  := $(APP_SRC:%.cpp=$(OBJDIR)/%.o)
TRAIN_OBJ:= $(TRAIN_SRC:%.cpp=$(OBJDIR)/%.o)
TOOL_OBJ := $(TOOL_SRC:%.cpp=$(OBJDIR)/%.o)
TEST_OBJ := $(TEST_SRC:%.cpp=$(OBJDIR)/%.o)
BENCH_OBJ:= $(BENCH_SRC:%.cpp=$(OBJDIR)/%.o)
# Tool and bench objects are built through pattern rules; keep them (make would delete them as
# intermediates and rebuild them on every later make invocation).
.SECONDARY: $(TOOL_OBJ) $(BENCH_OBJ)
# The doctest sources compile at TEST_OPTLEVEL in a release build: the loops a test spends its
# time in are the library's (compiled at OPTLEVEL), a test's own code only sets up and compares.
# -O1 takes about half of -O3's compile time per test object (docs/ci.md) and `make test` runs
# no slower. Tools and benchmarks keep OPTLEVEL (their speed is measured).
TEST_OPTLEVEL ?= -O1
ifeq ($(VARIANT),release)
$(TEST_OBJ): OPT := $(TEST_OPTLEVEL) -DNDEBUG
endif
# doctest's assertions as function calls without a try/catch of their own (an exception thrown
# inside one still fails its test case, reported by the case): the test objects compile faster
# in every build (docs/ci.md).
$(TEST_OBJ): CPPFLAGS += -DDOCTEST_CONFIG_SUPER_FAST_ASSERTS

LIB      := $(LIBDIR)/libminfer.a
SOLIB    := $(LIBDIR)/libminfer.so.$(VERSION)
SOLINKS  := $(LIBDIR)/libminfer.so.$(VERSION_MAJOR) $(LIBDIR)/libminfer.so
# The C API test: C11, include/minfer.h only, linked against the shared library.
CAPITEST := $(BINDIR)/test-capi
APPLIB   := $(OBJDIR)/libminfer-app.a
TRAINLIB := $(LIBDIR)/libminfer-train.a
TOOLS    := $(TOOL_SRC:tools/%.cpp=$(BINDIR)/%)
TESTBIN  := $(BINDIR)/minfer-tests
# The unit tests without the app layer (model fetching, reports: libzip/OpenSSL), without the
# real-model runs, without training (train/, libminfer-train.a: portable C++ over the CPU ops,
# outside the C API library) and without the CUDA emulation's own tests (test_cuda_emu.cpp: the
# emulation is portable C++ with no SIMD; the CPU kernels it is compared with have their own
# tests): what a cross build runs under emulation (scripts/ci-arm.sh, docs/ci.md). The native
# and sanitizer suites run every file.
UNIT_TEST_SRC := $(filter-out tests/test_model_hub.cpp tests/test_report.cpp tests/test_real_models.cpp tests/test_train.cpp tests/test_train_%.cpp tests/test_cuda_emu.cpp tests/test_cuda_emu_train.cpp,$(TEST_SRC))
UNITBIN  := $(BINDIR)/minfer-unit-tests
# The CUDA backend's sources compiled as C++ against the CPU emulation of CUDA (kernels/cuda/emu/),
# linked into the test binary only: `make test` runs every CUDA kernel without a GPU.
CUEMU_SRC:= $(wildcard kernels/cuda/*.cu kernels/cuda/*.cpp kernels/cuda/emu/*.cpp)
CUEMU_OBJ:= $(CUEMU_SRC:%=$(OBJDIR)/cuda-emu/%.o)
BENCHBIN := $(BENCH_SRC:bench/%.cpp=$(BINDIR)/%)

ifeq ($(CUDA),1)
  NVCC      ?= nvcc
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell which $(NVCC)))
  CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  CU_SRC    := $(wildcard kernels/cuda/*.cu)
  CU_OBJ    := $(CU_SRC:%.cu=$(OBJDIR)/cuda/%.o)
  # Only the backend choice differs from the CPU build's objects: its CUDA object has its own path.
  SELECT_OBJ:= $(OBJDIR)/cuda/kernels/cpu/backend_select.o
  LIB_OBJ   := $(filter-out $(OBJDIR)/kernels/cpu/backend_select.o,$(LIB_OBJ)) $(SELECT_OBJ)
  LIB_OBJ   += $(CU_OBJ) $(patsubst %.cpp,$(OBJDIR)/%.o,$(wildcard kernels/cuda/*.cpp))
  CPPFLAGS  += -I$(CUDA_HOME)/include
  LDFLAGS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64
  LDLIBS    += -lcublasLt -lcublas -lcudart
endif

# Data-parallel training over MPI (docs/training.md): on when mpicxx (Open MPI) is found, MPI=0
# turns it off. Only the distill tool links MPI (train/mpi/); the libraries and the tests do not.
# The flag file rebuilds distill.o when MPI changes.
MPICXX ?= mpicxx
MPI    ?= $(if $(shell command -v $(MPICXX) 2>/dev/null),1,0)
MPI_FLAG := $(OBJDIR)/mpi.flag
$(shell mkdir -p $(OBJDIR); [ "$$(cat $(MPI_FLAG) 2>/dev/null)" = "$(MPI)" ] || echo $(MPI) > $(MPI_FLAG))
ifeq ($(MPI),1)
  MPI_CFLAGS := $(shell $(MPICXX) --showme:compile) -DOMPI_SKIP_MPICXX=1
  MPI_LIBS   := $(filter-out -lmpi_cxx,$(shell $(MPICXX) --showme:link))
  MPI_OBJ    := $(OBJDIR)/train/mpi/comm_mpi.o
endif

.PHONY: all lib tools tests unit-tests test bench bench-llamacpp deps arm-deps models demo clean format install fuzz fuzzers fuzz-run asan-test
all: lib tools tests $(BENCHBIN)
lib: $(LIB) $(SOLINKS)
tools: $(TOOLS)
tests: $(TESTBIN)
unit-tests: $(UNITBIN)

$(OBJDIR)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

$(OBJDIR)/cuda-emu/%.o: %
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -DMINFER_CUDA_EMULATION -x c++ -c $< -o $@

$(OBJDIR)/cuda/kernels/cpu/backend_select.o: kernels/cpu/backend_select.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) -DMINFER_CUDA=1 $(CXXFLAGS) -c $< -o $@

$(OBJDIR)/cuda/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++20 -O3 $(CUDA_ARCH) -I. -DMINFER_CUDA=1 -MMD -MP -Xcompiler -fopenmp,-fPIC,-Werror=switch -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

# Only the C API is exported (visibility + version script); `nm -D` is checked in `make test`.
$(SOLIB): $(LIB_OBJ) capi/minfer.map
	@mkdir -p $(dir $@)
	$(CXX) -shared $(LDFLAGS) -Wl,-soname,libminfer.so.$(VERSION_MAJOR) \
	  -Wl,--version-script=capi/minfer.map $(SO_DEFS) $(LIB_OBJ) $(LDLIBS) -o $@

$(SOLINKS) &: $(SOLIB)
	ln -sf $(notdir $(SOLIB)) $(LIBDIR)/libminfer.so.$(VERSION_MAJOR)
	ln -sf libminfer.so.$(VERSION_MAJOR) $(LIBDIR)/libminfer.so

$(CAPITEST): tests/capi/test_capi.c include/minfer.h $(SOLINKS)
	@mkdir -p $(dir $@)
	$(CAPI_LD) -std=c11 -Wall -Wextra -Wpedantic -Werror $(OPT) -Iinclude $< -x none -o $@ \
	  -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) $(LDOPT) -lminfer -lm -lpthread

$(APPLIB): $(APP_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(TRAINLIB): $(TRAIN_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BINDIR)/%: $(OBJDIR)/tools/%.o $(TRAINLIB) $(APPLIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $< $(TRAINLIB) $(APPLIB) $(LIB) $(LDLIBS) $(APP_LIBS) -o $@

$(OBJDIR)/train/mpi/comm_mpi.o: CPPFLAGS += $(MPI_CFLAGS)
$(OBJDIR)/tools/distill.o: CPPFLAGS += -DMINFER_MPI=$(MPI)
$(OBJDIR)/tools/distill.o: $(MPI_FLAG)
$(BINDIR)/distill: $(OBJDIR)/tools/distill.o $(MPI_OBJ) $(TRAINLIB) $(APPLIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $< $(MPI_OBJ) $(TRAINLIB) $(APPLIB) $(LIB) $(LDLIBS) $(APP_LIBS) $(MPI_LIBS) -o $@

$(BINDIR)/%: $(OBJDIR)/bench/%.o $(APPLIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $< $(APPLIB) $(LIB) $(LDLIBS) $(APP_LIBS) -o $@

$(TESTBIN): $(TEST_OBJ) $(CUEMU_OBJ) $(TRAINLIB) $(APPLIB) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $(TEST_OBJ) $(CUEMU_OBJ) $(TRAINLIB) $(APPLIB) $(LIB) $(LDLIBS) $(APP_LIBS) -o $@

# The CUDA emulation without its training ops (kernels/cuda/train_*: only the training tests call
# them). The unit binary still links it: the format round trip (test_formats.cpp) runs each format
# on the emulated CUDA backend too.
UNIT_CUEMU_OBJ := $(filter-out $(OBJDIR)/cuda-emu/kernels/cuda/train_%,$(CUEMU_OBJ))
$(UNITBIN): $(UNIT_TEST_SRC:%.cpp=$(OBJDIR)/%.o) $(UNIT_CUEMU_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $(UNIT_TEST_SRC:%.cpp=$(OBJDIR)/%.o) $(UNIT_CUEMU_OBJ) $(LIB) $(LDLIBS) -o $@

# Tests run from the repository root (fixtures are found by relative path).
# TEST_ARGS passes doctest flags, e.g. make test TEST_ARGS='-tc="*gguf*"'.
# TEST_JOBS: doctest processes at a time (scripts/test-shards.sh: one per test file, one per case
# of the few long files), each with its own log under $(TESTLOGS); TEST_JOBS=1 runs the binary
# once as it is. The C API test runs after them.
TEST_JOBS ?= $(shell nproc)
TESTLOGS  := $(patsubst %/bin,%/test-logs,$(BINDIR))
# The tools the suite runs (MINFER_BIN): every one natively (the C API test compares with run-model
# and embed, the real: cases run bench); in the fuzz build, whose `make asan-test` runs the C API
# test on the tiny fixture only (greedy ids against run-model) and CI leaves out the real: cases,
# distill (mpirun -np 2 in test_train_parallel) and run-model: the eight others are not compiled
# under ASan (docs/ci.md).
TEST_TOOLS := $(if $(filter fuzz,$(VARIANT)),$(BINDIR)/distill $(BINDIR)/run-model,$(TOOLS))
# Under the sanitizers the long sweeps run as under qemu (MINFER_TEST_QUICK=1: fewer token and
# thread counts, the CUDA emulation on each format's first shape, every format, shape and code
# path kept; the full sweeps are the native run's): the ASan suite 644 -> 454 shard-seconds
# (docs/ci.md).
TEST_QUICK := $(if $(filter sanitize fuzz,$(VARIANT)),MINFER_TEST_QUICK=1)
test: $(TESTBIN) $(TEST_TOOLS) $(CAPITEST)
	bash scripts/check-layers.sh $(LIB) $(SOLIB)
	MINFER_BIN=$(BINDIR) $(TEST_QUICK) bash scripts/test-shards.sh -j $(TEST_JOBS) --logs $(TESTLOGS) $(TESTBIN) $(TEST_ARGS)
	MINFER_BIN=$(BINDIR) $(if $(filter sanitize fuzz,$(VARIANT)),MINFER_CAPI_TINY_ONLY=1) $(CAPITEST)

# Header, static and shared library (soname links), pkg-config file. DESTDIR stages a package.
install: $(LIB) $(SOLINKS)
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/minfer.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(LIB) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SOLIB) $(DESTDIR)$(PREFIX)/lib/
	ln -sf $(notdir $(SOLIB)) $(DESTDIR)$(PREFIX)/lib/libminfer.so.$(VERSION_MAJOR)
	ln -sf libminfer.so.$(VERSION_MAJOR) $(DESTDIR)$(PREFIX)/lib/libminfer.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' \
	  -e 's|@LIBS_PRIVATE@|$(LDFLAGS) $(LDLIBS) -lstdc++ -lm|' \
	  capi/minfer.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/minfer.pc

bench: $(BENCHBIN) $(TOOLS)
	@for b in $(BENCHBIN); do echo "== $$b"; $$b || exit 1; done

# minfer against llama.cpp (built from the llama-cpp-python sdist under ~/.cache/minfer/llamacpp,
# outside the repo) on the same SmolLM2 weights: docs/performance.md.
bench-llamacpp: $(BENCHBIN) $(TOOLS)
	bash bench/llamacpp.sh all

deps:
	bash scripts/install-deps.sh

arm-deps:
	bash scripts/install-arm-deps.sh

models: $(BINDIR)/fetch-model
	$(BINDIR)/fetch-model smollm2
	$(BINDIR)/fetch-model minilm

# The README's main job: build, fetch the default models, generate, measure, compare.
demo: all models
	BIN=$(BINDIR) bash scripts/demo.sh

# Fuzzing (docs/fuzzing.md): the libFuzzer harnesses tests/fuzz/fuzz_<name>.cpp, with the whole
# library compiled by clang under ASan + UBSan into $(FUZZ_BUILD)/ (its own tree, never mixed
# with build/). `make fuzz` builds them; `make fuzz-run FUZZ_SECONDS=60` runs each for that long
# from its seed corpus tests/fuzz/corpus/<name>/ (FUZZ_JOBS at a time) and fails on any crash,
# leak, timeout or non-minfer exception.
FUZZ_BUILD   ?= build-fuzz
FUZZ_CXX     ?= clang++
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_JOBS    ?= 2
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.cpp,%,$(wildcard tests/fuzz/fuzz_*.cpp))
FUZZ_BINS    := $(FUZZ_NAMES:%=$(BINDIR)/fuzz-%)
FUZZ_MAKE    := $(MAKE) FUZZ=1 BUILD=$(FUZZ_BUILD) CXX="$(FUZZ_CXX)" CC="$(FUZZ_CC)"

fuzz:
	+$(FUZZ_MAKE) fuzzers

# The whole suite and the C API test under clang ASan + UBSan, built from the fuzz build's objects
# (what CI runs: one sanitized compile of the library serves the fuzzers and the suite). The
# coverage hooks of -fsanitize=fuzzer-no-link are the runtimes' no-ops outside a fuzzer.
# `make SANITIZE=1 test` runs the same suite under g++'s ASan + UBSan in build/sanitize/.
asan-test:
	+$(FUZZ_MAKE) test

fuzzers: $(FUZZ_BINS)

$(BINDIR)/fuzz-%: $(OBJDIR)/tests/fuzz/fuzz_%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) -fsanitize=fuzzer $< $(LIB) $(LDLIBS) -o $@

# In the fuzz build the test and tool objects (never linked into a fuzzer) are compiled without
# coverage hooks and at -O0: still ASan + UBSan, at 40% of the compile time of -O1 with the hooks
# (the library they call stays -O1). The other objects no fuzzer links (train/, app/, the CUDA
# emulation) or reaches (the library's kernels/cpu/, models/, compress/ and capi/: the harnesses
# parse files, configs and text through engine/, tokenizer/ and kernels/common/, which include
# none of them) stay -O1 (the suite spends its time in them) without the hooks, whose calls on
# every branch and comparison cost the ASan suite 13% (docs/ci.md). The fuzz harnesses and the
# rest of the library keep OPT.
ifeq ($(VARIANT),fuzz)
NOHOOK_LIB_OBJ := $(filter $(OBJDIR)/kernels/cpu/% $(OBJDIR)/models/% $(OBJDIR)/compress/% $(OBJDIR)/capi/%,$(LIB_OBJ))
$(TEST_OBJ) $(TOOL_OBJ): OPT := -O0 -gline-tables-only -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
$(TRAIN_OBJ) $(MPI_OBJ) $(APP_OBJ) $(CUEMU_OBJ) $(NOHOOK_LIB_OBJ): OPT := -O1 -gline-tables-only -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
endif

fuzz-run: fuzz
	+$(FUZZ_MAKE) -j$(FUZZ_JOBS) $(FUZZ_NAMES:%=fuzz-run-%)

fuzz-run-%: $(BINDIR)/fuzz-%
	bash tests/fuzz/run.sh $< $* $(FUZZ_SECONDS) $(FUZZ_BUILD)

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(APP_OBJ:.o=.d) $(TRAIN_OBJ:.o=.d) $(FUZZ_NAMES:%=$(OBJDIR)/tests/fuzz/fuzz_%.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BENCH_OBJ:.o=.d) $(CUEMU_OBJ:.o=.d)
