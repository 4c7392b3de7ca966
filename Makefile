# tinymesh build. `make` builds everything into build/; `make test` runs every
# Criterion suite; `make asan` / `make tsan` run them under the sanitizers;
# `make demo` trains the GPT showcase, `make demo-mnist` the MLP one.
# Dependencies are Debian packages, installed (or named) by scripts/deps.sh
# before anything is compiled.

BUILD    ?= build
OPT      ?= -O2
SAN      ?=
CFLAGS   ?=
# Recursive (=) on purpose: pkg-config runs when a recipe needs the flags,
# which is after the deps target has installed the packages.
PKG_CFLAGS = $(shell pkg-config --cflags hwloc openblas zlib ompi-c)
PKG_LIBS   = $(shell pkg-config --libs hwloc openblas zlib ompi-c)
CR_CFLAGS  = $(shell pkg-config --cflags criterion)
CR_LIBS    = $(shell pkg-config --libs criterion)

# The TSan build swaps Criterion for a stand-in with the same macros: see
# tests/tsan-shim/criterion/criterion.h for why.
ifdef CRITERION_SHIM
CR_CFLAGS  = -Itests/tsan-shim
CR_LIBS    =
TEST_EXTRA = tests/tsan-shim/shim.c
endif

TM_CFLAGS = -std=c11 -D_GNU_SOURCE -g $(OPT) -fno-math-errno -Wall -Wextra -Werror -pthread \
            -I. -MMD -MP $(SAN) $(CFLAGS)
TM_LDFLAGS = -pthread $(SAN)

LIB_SRC   := $(wildcard runtime/*.c kernels/*.c strategies/*.c)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/%)
# Suites across processes, run under mpirun: built against the Criterion
# stand-in, since Criterion forks a process per test and MPI does not
# survive a fork.
MPI_TEST_SRC := $(wildcard tests/mpi_*.c)
MPI_TEST_BIN := $(MPI_TEST_SRC:tests/%.c=$(BUILD)/%)
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/%)
DEMO_SRC  := $(wildcard demos/*.c)
DEMO_BIN  := $(DEMO_SRC:demos/%.c=$(BUILD)/%)
LIB       := $(BUILD)/libtinymesh.a

# Suites that run threads at once: the TSan set (devices talking to each
# other, gemm's eight threads calling tm_sgemm together, the stop protocol,
# the GPT's stage, mesh and generation worlds, ZeRO and recomputation, the
# planner's dry and real runs, the collectives across processes under
# mpirun with the progress threads).
TSAN_SUITES ?= arena link world collectives clock gemm stop parallel gpt gpt_mesh stage zero recompute offload precision predict planner mpi_collectives
SUITES ?=
TEST_RUN := $(if $(SUITES),$(foreach s,$(SUITES),$(if $(filter mpi_%,$s),$(if $(wildcard tests/$s.c),$(BUILD)/$s),$(BUILD)/test_$s)),$(TEST_BIN) $(MPI_TEST_BIN))

.PHONY: all deps test asan tsan demo demo-mnist tour bench bench-peers clean
all: $(LIB) $(TEST_BIN) $(MPI_TEST_BIN) $(BENCH_BIN) $(DEMO_BIN)

deps:
	@scripts/deps.sh

# Per-ISA micro-kernels get their instruction set; everything else stays
# portable and dispatches at run time (kernels/isa.h): a file whose name
# holds "avx2", "avx512" or "avx512bf16" (which also holds "avx512").
AVX2_OBJ     := $(foreach o,$(LIB_OBJ),$(if $(findstring avx2,$(notdir $o)),$o))
AVX512BF_OBJ := $(foreach o,$(LIB_OBJ),$(if $(findstring avx512bf16,$(notdir $o)),$o))
AVX512_OBJ   := $(filter-out $(AVX512BF_OBJ),\
                  $(foreach o,$(LIB_OBJ),$(if $(findstring avx512,$(notdir $o)),$o)))
AVX512_FLAGS := -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma
$(AVX2_OBJ): ISA = -mavx2 -mfma
$(AVX512_OBJ): ISA = $(AVX512_FLAGS)
$(AVX512BF_OBJ): ISA = $(AVX512_FLAGS) -mavx512bf16
$(BUILD)/obj/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(TM_CFLAGS) $(ISA) $(PKG_CFLAGS) -c $< -o $@

# The AVX-512 micro-kernels built a second time for AVX2 (kernels/simd16.h),
# under other names, for the GEMM tests: so that their logic is tested on
# every machine, AVX-512 or not.
TWIN_SRC := $(wildcard kernels/ukr_avx512*.c)
TWIN_OBJ := $(TWIN_SRC:%.c=$(BUILD)/obj/twin/%.o)
$(TWIN_OBJ): $(BUILD)/obj/twin/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(TM_CFLAGS) -mavx2 -mfma -DTM_SIMD16_TWIN $(PKG_CFLAGS) -c $< -o $@
$(BUILD)/test_gemm $(BUILD)/test_bf16: TEST_OBJ = $(TWIN_OBJ)
$(BUILD)/test_gemm $(BUILD)/test_bf16: $(TWIN_OBJ)

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BUILD)/test_%: tests/test_%.c $(LIB) $(TEST_EXTRA) | deps
	$(CC) $(TM_CFLAGS) $(PKG_CFLAGS) $(CR_CFLAGS) $< $(TEST_EXTRA) $(TEST_OBJ) -o $@ $(LIB) $(TM_LDFLAGS) $(CR_LIBS) $(PKG_LIBS) -lm

$(BUILD)/mpi_%: tests/mpi_%.c $(LIB) tests/tsan-shim/shim.c | deps
	$(CC) $(TM_CFLAGS) $(PKG_CFLAGS) -Itests/tsan-shim $< tests/tsan-shim/shim.c -o $@ $(LIB) $(TM_LDFLAGS) $(PKG_LIBS) -lm

$(BUILD)/bench_%: bench/bench_%.c $(LIB) | deps
	$(CC) $(TM_CFLAGS) $(PKG_CFLAGS) $< -o $@ $(LIB) $(TM_LDFLAGS) $(PKG_LIBS) -lm

$(BUILD)/%: demos/%.c $(LIB) | deps
	$(CC) $(TM_CFLAGS) $(PKG_CFLAGS) $< $(DEMO_OBJ) -o $@ $(LIB) $(TM_LDFLAGS) $(PKG_LIBS) -lm

# build/fit's second story, the GPT's, is linked into it.
FIT_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard demos/fit/*.c))
$(BUILD)/fit: DEMO_OBJ = $(FIT_OBJ)
$(BUILD)/fit: $(FIT_OBJ)

# build/train's progress lines and metrics are linked into it.
TRAIN_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard demos/train/*.c))
$(BUILD)/train: DEMO_OBJ = $(TRAIN_OBJ)
$(BUILD)/train: $(TRAIN_OBJ)

test: $(TEST_RUN) $(DEMO_BIN) $(BENCH_BIN)
	@scripts/run-tests.sh $(BUILD) $(SUITES)

asan:
	$(MAKE) BUILD=build/asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

tsan:
	$(MAKE) BUILD=build/tsan OPT=-O1 SAN="-fsanitize=thread" CRITERION_SHIM=1 \
	  SUITES="$(or $(SUITES),$(TSAN_SUITES))" test

# The showcase: the GPT on 8 devices (dp 2 x pp 2 x tp 2, sequence
# parallelism, 1F1B) on the fortunes corpus, then a sample. demo-mnist: the
# MLP on Fashion-MNIST on the same mesh.
demo: $(BUILD)/train
	$(BUILD)/train --model gpt --dp 2 --pp 2 --tp 2 --sequence-parallel --micro-batches 4 \
	  --steps 600 --lr 3e-3 --warmup-steps 30 --lr-decay-steps 600 --eval-every 100 \
	  --eval-sequences 128 --sample-tokens 300

demo-mnist: $(BUILD)/train
	$(BUILD)/train --dp 2 --pp 2 --tp 2 --micro-batches 4

# Re-runs every command of docs/tour.md and compares the outputs.
tour: all
	@scripts/tour.sh

bench: $(BENCH_BIN)

# The side-by-side peers in bench/peers, built only where their toolchain
# exists: the Open MPI peer of bench_collectives needs mpicc.
bench-peers:
	@mkdir -p $(BUILD)
	@if command -v mpicc >/dev/null 2>&1; then \
	  echo "mpicc bench/peers/mpi_collectives.c -o $(BUILD)/mpi_collectives"; \
	  mpicc -std=c11 -D_GNU_SOURCE $(OPT) -Wall -Wextra -Werror \
	    bench/peers/mpi_collectives.c -o $(BUILD)/mpi_collectives -lm; \
	else \
	  echo "bench-peers: mpicc not found, skipping the Open MPI peer (apt-get install libopenmpi-dev)"; \
	fi

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(TWIN_OBJ:.o=.d) $(TEST_BIN:=.d) $(MPI_TEST_BIN:=.d) $(BENCH_BIN:=.d) $(DEMO_BIN:=.d) $(FIT_OBJ:.o=.d) $(TRAIN_OBJ:.o=.d)
