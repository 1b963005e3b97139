GO ?= go
BIN := bin/sigil
PKGS := ./...

.PHONY: build run test unit integration bench proto lint clean

build:
	$(GO) build -o $(BIN) ./cmd/sigil

run: build
	./$(BIN) dev

test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 14m ./...

unit:
	$(GO) test -race -count=1 -short ./...

integration: build
	$(GO) test -race -count=1 -timeout 10m ./integration/...

bench:
	$(GO) run ./bench
	$(GO) test -run '^$$' -bench . -benchtime 1s ./ca/ ./mtls/...

proto:
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I api \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		api/sigil/v1/*.proto

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...

clean:
	rm -rf bin
