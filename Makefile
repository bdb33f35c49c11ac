# The README's two commands: `make run` (the platform on embedded defaults) and `make test` (the whole suite).
.PHONY: run test bench-smoke gen lint build

# run builds, then execs the binary, so a signal to make's shell reaches loom itself (go run would leave the
# server running when the go process is killed).
run: build
	exec ./bin/loom serve

test:
	go vet ./...
	go test -count=1 -timeout 15m ./...
	# The race detector over the packages whose goroutines share state: the server and client plumbing, the
	# gateway, the database layer and replica tracking, the embedded vector store, the agent loop.
	go test -race -count=1 -timeout 10m ./internal/... ./gateway/... ./memory/localstore/... ./agent/...
	cd deploy/kubernetes && go vet ./... && go test -count=1 -timeout 15m ./...
	cd web && npm test
	$(MAKE) bench-smoke

# bench-smoke runs every benchmark of docs/benchmarks.md once, small, so none can rot; it asserts nothing about
# speed (the figures come from the commands in docs/benchmarks.md). deploy/scale's fill-to-3M runs stay manual.
bench-smoke:
	go test -count=1 -run '^$$' -bench . -benchtime 1x ./agent/... ./internal/... ./memory/... ./orchestrator/...
	MEMBENCH_N=25000 MEMBENCH_QUERIES=20 MEMBENCH_BACKENDS=localstore,localstore-int8,localstore-ivf \
		go test -count=1 -run TestRunSized ./memory/membench/

build:
	go build -o bin/loom ./cmd/loom

gen:
	go tool -modfile=tools/buf/go.mod buf generate

# lint: the contracts (buf) and the Go code (golangci-lint, configured in .golangci.yml, pinned in tools/lint).
lint:
	go tool -modfile=tools/buf/go.mod buf lint
	go tool -modfile=tools/lint/go.mod golangci-lint run ./...
