# Build, test and benchmark mkbootfs. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
export PATH := /usr/local/go/bin:$(PATH)

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Static, reproducible binaries: no cgo, no local paths, no symbol tables.
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)"
# The boot image layer must stay under 5 MiB compressed (DESIGN.md); bootinit is most of it.
BOOTINIT_GZ_LIMIT := 5242880
BENCHTIME ?= 1s
BENCHCOUNT ?= 1
# staticcheck 2025.1.1; the module proxy knows it only by its semver name.
STATICCHECK_VERSION := v0.6.1

.PHONY: help build image test bench lint demo clean fmt-check

help:
	@echo 'make build   static bin/mkbootfs (and bin/bootinit), version $(VERSION)'
	@echo 'make image   docker image mkbootfs:$(VERSION) of bin/mkbootfs (Dockerfile, offline)'
	@echo 'make demo    install what is needed, convert a sample tree, extract it, verify'
	@echo 'make test    install and start what the tests need (scripts/setup.sh), gofmt, vet, go test -race'
	@echo 'make bench   benchmarks (BENCHTIME=$(BENCHTIME) BENCHCOUNT=$(BENCHCOUNT)) and bench/*.sh; output in bench/out/'
	@echo 'make lint    gofmt, go vet, staticcheck $(STATICCHECK_VERSION) when it installs'
	@echo 'make clean   remove bin/ and bench/out/'

build:
	mkdir -p bin
	$(GOBUILD) -o bin/mkbootfs ./cmd/mkbootfs
ifneq ($(wildcard cmd/bootinit/*.go),)
	$(GOBUILD) -o bin/bootinit ./cmd/bootinit
	@size=$$(stat -c %s bin/bootinit); gz=$$(gzip -9c bin/bootinit | wc -c); \
	awk -v s=$$size -v g=$$gz 'BEGIN { printf "bin/bootinit: %d bytes (%.1f MiB), %d bytes gzipped (%.2f MiB; limit 5 MiB)\n", s, s/1048576, g, g/1048576 }'; \
	if [ $$gz -gt $(BOOTINIT_GZ_LIMIT) ]; then echo 'WARNING: bin/bootinit gzipped is over 5 MiB: something heavy (desync? cobra? the converter?) is linked in' >&2; fi
endif

image: build
	docker build -t mkbootfs:$(VERSION) -t mkbootfs:latest .

fmt-check:
	@bad=$$(git ls-files --cached --others --exclude-standard -- '*.go' ':!:**/testdata/**' | \
		while read -r f; do if [ -f "$$f" ]; then echo "$$f"; fi; done | xargs -r gofmt -l); \
	if [ -n "$$bad" ]; then echo "gofmt needed (run gofmt -w):" >&2; echo "$$bad" >&2; exit 1; fi

test:
	scripts/setup.sh
	$(MAKE) --no-print-directory fmt-check
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 25m ./...

# bench/*.sh scripts use the binary just built (MKBOOTFS).
bench: build
	scripts/setup.sh
	mkdir -p bench/out
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -count $(BENCHCOUNT) -timeout 60m ./... | tee bench/out/go-bench.txt
	for f in bench/*.sh; do \
		if [ -f "$$f" ] && [ -x "$$f" ]; then echo "== $$f"; MKBOOTFS=$(CURDIR)/bin/mkbootfs "$$f" | tee "bench/out/$$(basename "$$f" .sh).txt"; fi; \
	done
	@echo "results: bench/out/"

lint: fmt-check
	$(GO) vet ./...
	@bin=$$($(GO) env GOBIN); sc=$${bin:-$$($(GO) env GOPATH)/bin}/staticcheck; \
	if [ -x "$$sc" ] || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); then \
		echo "$$sc ./..."; "$$sc" ./...; \
	else \
		echo "staticcheck $(STATICCHECK_VERSION) did not install from the module proxy: skipped"; \
	fi

demo: build
	scripts/setup.sh
	scripts/demo.sh

clean:
	rm -rf bin bench/out
