# The two commands a user needs: `make run` and `make test`. Both install and start what they
# need (ClickHouse from Debian's packages, chDB from npm) with project-local data under .data/.
SHELL := /bin/bash
GO ?= go
CH := deploy/local/clickhouse.sh
CLUSTER := deploy/local/cluster.sh
CONFIG ?=
export LAMBDA_TEST_CLICKHOUSE_ADDR ?= 127.0.0.1:9000
# The local cluster (deploy/local/cluster.sh): cluster-mode tests skip when these are unset.
export LAMBDA_TEST_CLUSTER_ADDR ?= 127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003,127.0.0.1:19004
export LAMBDA_TEST_ZOOKEEPER ?= 127.0.0.1:12181

.PHONY: all build run test e2e bench bench-speed bench-batch bench-serving bench-volume bench-import lint fmt ch-start ch-stop cluster-start cluster-stop chdb test-deps clean

all: build

build:
	$(GO) build -o bin/lambda ./cmd/lambda

ch-start:
	$(CH) start

ch-stop:
	$(CH) stop

# ZooKeeper and a ClickHouse cluster of 2 shards x 2 replicas, data in .data/cluster/.
cluster-start:
	$(CLUSTER) start

cluster-stop:
	$(CLUSTER) stop

# chDB (a current ClickHouse engine for Node) checks every statement on a modern server;
# chromium and playwright-core drive the browser test; docker-compose validates deploy/.
test-deps:
	deploy/local/test-deps.sh

chdb: test-deps

run: build ch-start
	./bin/lambda dev $(if $(CONFIG),--config $(CONFIG))

test: ch-start cluster-start test-deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	# The import of a million lines (200k under the race detector above).
	$(GO) test -count=1 -timeout 10m -run '^TestImport$$' ./cmd/lambda

# The end-to-end test alone (also part of `make test`).
e2e: ch-start test-deps
	$(GO) test -count=1 -timeout 15m -v -run TestEndToEnd ./e2e

bench: build ch-start chdb bench-speed bench-batch bench-serving bench-volume bench-import

bench-speed:
	bash bench/speed.sh

bench-batch:
	bash bench/batch.sh

bench-serving:
	bash bench/serving.sh

# Dashboards at volume: 7 days x 5M events, every dashboard query, against the pre-rollup build.
bench-volume: build
	bash bench/volume.sh

# lambda import of a million JSON lines against a bare clickhouse-client INSERT … FORMAT JSONEachRow.
bench-import:
	bash bench/import.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean: ch-stop cluster-stop
	rm -rf bin .data
