GO ?= go
BIN := bin/sigil
PKGS := ./...

.PHONY: build run test unit integration bench proto lint clean fuzz fuzz-short release release-cgo docker-image

# go test starts the packages' test binaries in the order its arguments
# name them (two at a time on two cores): the longest first, so that
# they do not start last, then the rest of ./... (listed once).
TESTORDER ?= ./integration/... ./cmd/sigil ./agent ./server ./ca/keymanager/disk ./bench/scale ./raftstore ./ca/upstream/disk ./...

# Each fuzz target runs for FUZZTIME under `make fuzz` and for
# FUZZTIME_SHORT under `make fuzz-short` (part of `make test`). Either may
# be a duration (3s) or a count of inputs (2000x). FUZZ selects targets by
# an extended regexp on "./pkg.FuzzName". The short run counts inputs:
# with a duration, Go before 1.27 can fail a target that found nothing
# with "context deadline exceeded" when -fuzztime ends while a worker is
# busy (golang/go#75804), which made `make test` flaky on a loaded host.
FUZZTIME ?= 60s
FUZZTIME_SHORT ?= 5000x
FUZZ ?=

# Release builds (docs/release.md). VERSION, COMMIT and BUILD_DATE are
# linked into internal/version; BUILD_DATE follows SOURCE_DATE_EPOCH when
# it is set (reproducible builds). `make release` builds a static binary
# (CGO_ENABLED=0: no pkcs11 key manager) per PLATFORMS into DIST, named
# sigil-<os>-<arch>, and DIST/SHA256SUMS; `make release-cgo` builds
# sigil-<os>-<arch>-cgo for this host only, linked against its libc, with
# pkcs11.
DIST ?= dist
PLATFORMS ?= linux/amd64 linux/arm64
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE ?= $(shell date -u $${SOURCE_DATE_EPOCH:+-d @$$SOURCE_DATE_EPOCH} +%Y-%m-%dT%H:%M:%SZ)
VERSION_PKG := github.com/sigil-id/sigil/internal/version
RELEASE_LDFLAGS := -s -w -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).commit=$(COMMIT) -X $(VERSION_PKG).date=$(BUILD_DATE)

build:
	$(GO) build -o $(BIN) ./cmd/sigil

release:
	@mkdir -p $(DIST)
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; out=$(DIST)/sigil-$$os-$$arch; \
		echo "building $$out ($(VERSION))"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(RELEASE_LDFLAGS)' -o $$out ./cmd/sigil; \
	done
	cd $(DIST) && sha256sum sigil-* > SHA256SUMS

release-cgo:
	@mkdir -p $(DIST)
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags '$(RELEASE_LDFLAGS)' -o $(DIST)/sigil-$$($(GO) env GOOS)-$$($(GO) env GOARCH)-cgo ./cmd/sigil
	cd $(DIST) && sha256sum sigil-* > SHA256SUMS

# docker-image builds the container image of the Dockerfile (the static
# binary on distroless, non-root) for this host's architecture.
docker-image:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) --build-arg BUILD_DATE=$(BUILD_DATE) -t sigil:$(VERSION) .

run: build
	./$(BIN) dev

test:
	@unformatted="$$("$$($(GO) env GOROOT)/bin/gofmt" -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 14m $(TESTORDER)
	$(MAKE) --no-print-directory fuzz-short

unit:
	$(GO) test -race -count=1 -short ./...

integration: build
	$(GO) test -race -count=1 -timeout 10m ./integration/...

bench:
	$(GO) run ./bench $(BENCHFLAGS)
	$(GO) test -run '^$$' -bench . -benchtime 1s ./ca/ ./ca/keymanager/pkcs11/ ./mtls/...

# scale runs the load tool (a real server cluster, N simulated agents); see
# docs/scale.md. Example: make scale SCALEFLAGS='-entries 10000,100000 -agents 100,1000'
.PHONY: scale
scale:
	$(GO) run ./bench/scale $(SCALEFLAGS)

# fuzz runs every FuzzXxx target of the module for FUZZTIME each.
fuzz:
	GO="$(GO)" FUZZTIME="$(FUZZTIME)" bash scripts/fuzz.sh '$(FUZZ)'

# fuzz-short runs every fuzz target briefly (without -race), from its seeds
# only, as `make test` does after the unit and integration tests: one test
# binary per package, coverage counters in this module's packages only
# (scripts/fuzz.sh, FUZZINSTRUMENT).
fuzz-short:
	GO="$(GO)" FUZZTIME="$(FUZZTIME_SHORT)" FUZZMINIMIZETIME=0 FUZZTIMEOUT=3m FUZZCORPUS=seeds bash scripts/fuzz.sh '$(FUZZ)'

proto:
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I api \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		api/sigil/v1/*.proto
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I api -I internal \
		--go_out=internal --go_opt=paths=source_relative \
		--go-grpc_out=internal --go-grpc_opt=paths=source_relative \
		internal/storepb/store.proto internal/clusterpb/cluster.proto

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...

clean:
	rm -rf bin dist
