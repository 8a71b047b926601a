# thaw - top-level build.  Everything lands in $(BUILD) (build/ by default;
# build/asan for the sanitizer build).  `make help` lists the targets.

BUILD ?= build
CC ?= gcc
PKGS := fuse3 liburing libcurl libxxhash
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS ?= -O2 -g
# Truncating an over-long message or path into a fixed buffer is intended.
CFLAGS += -std=gnu11 -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread \
          -MMD -MP $(PKG_CFLAGS)
ifeq ($(SAN),1)
CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
LDLIBS += $(PKG_LIBS) -lm -pthread

LIB_SRCS := $(wildcard common/*.c objstore/*.c uffd/*.c fusefs/*.c)
CLI_SRCS := $(wildcard launcher/*.c)
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
TOOL_SRCS := $(wildcard tests/tools/*.c)

LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
CLI_OBJS := $(CLI_SRCS:%.c=$(BUILD)/obj/%.o)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
TOOL_BINS := $(TOOL_SRCS:tests/tools/%.c=$(BUILD)/tools/%)

.PHONY: all deps demo test test-run unit asan fuzz bench bench-objstore bench-uffd bench-fuse clean help

all: $(BUILD)/thaw $(UNIT_BINS) $(TOOL_BINS)

help:
	@echo "make            build build/thaw, the unit tests and the test tools"
	@echo "make deps       install missing Debian and npm packages (idempotent)"
	@echo "make demo       run 'thaw demo' on the embedded file:// store"
	@echo "make test       deps + build + every test (unit and integration), then ASan/UBSan run"
	@echo "make asan       build into build/asan with ASan+UBSan and run every test there"
	@echo "make fuzz       build and briefly run the libFuzzer targets"
	@echo "make bench-objstore | bench-uffd | bench-fuse   side-by-side benchmarks"

$(BUILD)/libthaw.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/thaw: $(CLI_OBJS) $(BUILD)/libthaw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libthaw.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libthaw.a $(LDLIBS)

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libthaw.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libthaw.a $(LDLIBS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

deps:
	@sh tests/deps.sh

demo: deps all
	$(BUILD)/thaw demo

# The whole suite: normal build, then the same tests under ASan+UBSan.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 all
	@sh tests/run.sh build build/asan

test-run: all
	@sh tests/run.sh $(BUILD)

unit: all
	@sh tests/run.sh --unit-only $(BUILD)

asan:
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 test-run

FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
fuzz: deps all
	@sh tests/fuzz/run.sh $(FUZZ_SRCS)

bench: bench-objstore bench-uffd

bench-objstore: deps all
	@sh bench/objstore.sh

bench-uffd: deps all
	@sh bench/uffd.sh

bench-fuse: deps all
	@sh bench/fuse.sh

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(CLI_OBJS:.o=.d)
