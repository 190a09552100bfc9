# The two commands a user needs: `make run` and `make test`. Both install and start what they
# need (ClickHouse from Debian's packages, chDB from npm) with project-local data under .data/.
SHELL := /bin/bash
GO ?= go
CH := deploy/local/clickhouse.sh
CONFIG ?=
export LAMBDA_TEST_CLICKHOUSE_ADDR ?= 127.0.0.1:9000

.PHONY: all build run test test-go bench bench-speed bench-batch bench-serving lint fmt ch-start ch-stop chdb clean

all: build

build:
	$(GO) build -o bin/lambda ./cmd/lambda

ch-start:
	$(CH) start

ch-stop:
	$(CH) stop

# chDB (a current ClickHouse engine for Node) checks every statement on a modern server.
chdb: tools/chdb/node_modules/.installed

tools/chdb/node_modules/.installed: tools/chdb/package.json tools/chdb/package-lock.json
	npm ci --prefix tools/chdb --no-audit --no-fund --loglevel=error
	touch $@

run: build ch-start
	./bin/lambda dev $(if $(CONFIG),--config $(CONFIG))

test: ch-start chdb
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

bench: build ch-start chdb bench-speed bench-batch bench-serving

bench-speed:
	bash bench/speed.sh

bench-batch:
	bash bench/batch.sh

bench-serving:
	bash bench/serving.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean: ch-stop
	rm -rf bin .data
