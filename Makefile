# The README's two commands: `make run` (the platform on embedded defaults) and `make test` (the whole suite).
.PHONY: run test gen lint build

run:
	go run ./cmd/loom serve

test:
	go vet ./...
	go test -count=1 -timeout 15m ./...
	cd deploy/kubernetes && go vet ./... && go test -count=1 -timeout 15m ./...
	cd web && npm test

build:
	go build -o bin/loom ./cmd/loom

gen:
	go tool -modfile=tools/buf/go.mod buf generate

lint:
	go tool -modfile=tools/buf/go.mod buf lint
