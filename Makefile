# ember — build, test, fuzz.  `make` builds build/ember; `make check` runs every test.
# BUILD may be overridden so parallel work trees do not share object files.
BUILD    ?= build
CC       ?= cc
CLANG    ?= clang
BPFTOOL  ?= bpftool
SAN      ?=
CFLAGS   ?= -O2 -g
WARN      = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
PKGS      = libbpf libdw libelf libmicrohttpd libcurl jansson sqlite3 libzstd libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ALL_CFLAGS = $(CFLAGS) $(WARN) -std=gnu11 -D_GNU_SOURCE -Isrc -I$(BUILD) $(PKG_CFLAGS) $(SAN)
LIBS       = $(PKG_LIBS) -liberty -lz -lpthread -lm

ARCH      := x86
BPF_SRC   := $(wildcard src/bpf/*.bpf.c)
BPF_OBJ   := $(patsubst src/bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRC))
BPF_SKEL  := $(patsubst src/bpf/%.bpf.c,$(BUILD)/%.skel.h,$(BPF_SRC))

LIB_SRC   := $(wildcard src/common/*.c src/store/*.c src/server/*.c src/agent/*.c)
LIB_OBJ   := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRC))
MAIN_OBJ  := $(BUILD)/obj/cli/main.o
CLI_SRC   := $(filter-out src/cli/main.c,$(wildcard src/cli/*.c))
CLI_OBJ   := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(CLI_SRC))

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
WORK_SRC  := $(wildcard tests/workloads/*.c)
WORK_BIN  := $(patsubst tests/workloads/%.c,$(BUILD)/workloads/%,$(WORK_SRC))

.PHONY: all setup run check test unit e2e asan fuzz format clean bench
all: $(BUILD)/ember $(UNIT_BIN) $(WORK_BIN)

setup:
	@scripts/setup.sh

# The README's main job: install, build, profile this host, serve API and page.
run: setup
	@$(MAKE) --no-print-directory all
	exec $(BUILD)/ember run

# The README's test command: install, build, run all tests (unit, sanitizer unit, end to end).
check: setup
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" CFLAGS="-O1 -g" unit-bins
	@scripts/run-tests.sh $(BUILD) build-asan

test: check

unit-bins: $(UNIT_BIN)

$(BUILD)/ember: $(MAIN_OBJ) $(CLI_OBJ) $(BUILD)/libember.a
	$(CC) $(SAN) -o $@ $(MAIN_OBJ) $(CLI_OBJ) $(BUILD)/libember.a $(LIBS)

$(BUILD)/libember.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/obj/%.o: src/%.c $(BPF_SKEL) $(BUILD)/web_index.h $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libember.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< $(BUILD)/libember.a $(LIBS) -lcmocka

# test_symbolize dlopens, from its own directory, a library with versioned symbols (name@@VER).
$(BUILD)/tests/test_symbolize: $(BUILD)/tests/libversioned.so
$(BUILD)/tests/libversioned.so: tests/unit/lib/versioned.c tests/unit/lib/versioned.map
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -fPIC -shared -Wl,--version-script=tests/unit/lib/versioned.map -o $@ $<

# Test workloads: clang keeps frame pointers in leaf functions, gcc does not.
$(BUILD)/workloads/%: tests/workloads/%.c
	@mkdir -p $(dir $@)
	$(CLANG) -O2 -g -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -pthread -o $@ $< -ldl

# The shlib workload's hot code lives in a shared library, dlopen'ed from the executable's dir.
$(BUILD)/workloads/shlib: $(BUILD)/workloads/libhot.so
$(BUILD)/workloads/libhot.so: tests/workloads/lib/hotlib.c tests/workloads/burn.h
	@mkdir -p $(dir $@)
	$(CLANG) -O2 -g -fPIC -shared -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -o $@ $<

# dlopen_late and its library keep no frame pointers: only their CFI walks them (the DWARF
# adversarial test), and the library is dlopen'ed seconds after start.
$(BUILD)/workloads/dlopen_late: tests/workloads/dlopen_late.c tests/workloads/burn.h \
			      $(BUILD)/workloads/libcfi.so
	@mkdir -p $(dir $@)
	$(CLANG) -O2 -g -fomit-frame-pointer -o $@ $< -ldl
# startup keeps none either: its stacks reach _start only through libc's table.
$(BUILD)/workloads/startup: tests/workloads/startup.c tests/workloads/burn.h
	@mkdir -p $(dir $@)
	$(CLANG) -O2 -g -fomit-frame-pointer -o $@ $<
$(BUILD)/workloads/libcfi.so: tests/workloads/lib/cfilib.c tests/workloads/burn.h
	@mkdir -p $(dir $@)
	$(CLANG) -O2 -g -fPIC -shared -fomit-frame-pointer -o $@ $<

# The page is compiled into the binary: web/index.html becomes a byte array.
$(BUILD)/web_index.h: web/index.html
	@mkdir -p $(dir $@)
	{ echo 'static const unsigned char web_index_html[] = {'; \
	  od -An -v -tx1 $< | sed 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '};'; } > $@

# Test tools (perf.data replay and friends): each tests/tools/*.c links with libember.a.
TOOL_BIN  := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(wildcard tests/tools/*.c))
all: $(TOOL_BIN)
$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libember.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libember.a $(LIBS)

$(BUILD)/vmlinux.h:
	@mkdir -p $(dir $@)
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@

$(BUILD)/bpf/%.bpf.o: src/bpf/%.bpf.c $(wildcard src/bpf/*.h) $(BUILD)/vmlinux.h
	@mkdir -p $(dir $@)
	$(CLANG) -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BUILD) -Isrc/bpf -c $< -o $@

$(BUILD)/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(BPFTOOL) gen skeleton $< > $@

# Made by pattern rules, so make would delete them as intermediates and every object (they all
# depend on the skeletons) would be rebuilt on the next run.
.SECONDARY: $(BPF_OBJ) $(BPF_SKEL)

FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_BIN := $(patsubst fuzz/%.c,build-fuzz/%,$(FUZZ_SRC))
FUZZ_SECONDS ?= 20
# Each target runs FUZZ_SECONDS over its seeds and its growing corpus; the log and any crash,
# leak or timeout input stay in build-fuzz/ and fail the run (the exit status is the fuzzer's).
# Undefined behaviour in the library is fatal; in a harness it is reported and the run goes on.
fuzz:
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=$(CLANG) CFLAGS="-O1 -g" \
		SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined \
		-fno-omit-frame-pointer" build-fuzz/libember.a
	@for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
		$(CLANG) -O1 -g -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc -Ibuild-fuzz $(PKG_CFLAGS) \
			-o build-fuzz/$$n $$f build-fuzz/libember.a $(LIBS) || exit 1; \
		mkdir -p build-fuzz/corpus-$$n; \
		echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
		if ! build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
			-artifact_prefix=build-fuzz/$$n- build-fuzz/corpus-$$n fuzz/seeds/$$n \
			> build-fuzz/$$n.log 2>&1; then \
			grep -B2 -A30 'ERROR\|runtime error\|Test unit written' build-fuzz/$$n.log | head -60; \
			echo "fuzz: $$n FAILED (log: build-fuzz/$$n.log)"; exit 1; \
		fi; \
		tail -n 2 build-fuzz/$$n.log; \
	done

# Benchmarks: bench/*.sh, helped by bench/*.c programs linked with libember.a.
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
$(BUILD)/bench/%: bench/%.c $(BUILD)/libember.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libember.a $(LIBS)

bench: all $(BENCH_BIN)
	@bench/run-all.sh $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-fuzz
