# replproxy: make demo runs a local master, the proxy and two replicas;
# make test runs the whole suite against real redis-server processes.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
BIN       := bin/replproxy

.PHONY: build deps test compat fmt-check vet fuzz bench demo clean

# Installs the Redis packages the tests and the demo need, when any is missing.
deps:
	@./scripts/deps.sh

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/replproxy

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# The fuzz seed corpora run as ordinary tests here; `make fuzz` explores.
test: deps fmt-check vet
	$(GO) test -race -count=1 -timeout 18m ./...

# The version matrix: Redis 6.2, 7.0, 7.2, 7.4 and Valkey 8.0, built once
# from ../shared/redis-versions into ~/.cache/replproxy/redis-versions.
compat: deps
	@./scripts/build-versions.sh
	$(GO) test -race -count=1 -timeout 20m -tags compat -run 'TestCompat' ./proxy

fuzz:
	$(GO) test -run XXX -fuzz FuzzReadCommand -fuzztime 60s ./resp
	$(GO) test -run XXX -fuzz FuzzDispatch -fuzztime 60s ./fanout

# Fixed iteration counts: the default 1s benchtime makes Append write
# gigabytes per round and swing with the page cache (bench/README.md).
bench:
	$(GO) test -run XXX -bench 'BenchmarkAppend$$' -benchtime 4096x -count 3 ./backlog
	$(GO) test -run XXX -bench AppendSmall -benchtime 1000000x -count 3 ./backlog
	$(GO) test -run XXX -bench CatchUp -benchtime 8x -count 3 ./backlog
	$(GO) test -run XXX -bench . -benchmem ./resp
	$(GO) run ./bench/scenario

demo: deps build
	./scripts/demo.sh

clean:
	rm -rf bin demo-data
