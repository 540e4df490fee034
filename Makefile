# keyrelay: the everyday commands. CI runs `make ci` (bash .ci/run).
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: run test vet fmt migrate build ci bench

run:     ## migrate, create the demo tenant, serve on 127.0.0.1:8080
	$(GO) run ./app

test:    ## the README's test command (needs PostgreSQL and Redis)
	$(GO) test -race -count=1 -timeout 15m ./...

vet:
	$(GO) vet ./...

fmt:
	$(GO) fmt ./...

migrate: ## apply migrations as the owner (KEYRELAY_DATABASE_URL)
	$(GO) run ./app migrate

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/keyrelay ./app

ci:
	bash .ci/run

bench:   ## issues 6 and 7: create, pickup and list against pgbench (deploy/bench/README.md); ARGS=-keep etc.
	$(GO) run ./deploy/bench $(ARGS) $(or $(SCENARIO),all)
