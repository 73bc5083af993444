# Awareness: `make run` and `make test` work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
GEN_STAMP := clients/python/src/.generated
VENDOR_STAMP := services/portal/static/vendor/.vendored
PROTO_FILES := $(shell find protos -name '*.proto' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup run test lint protos dist bench bench-signing bench-ingest bench-policy bench-scoring bench-analytics clean

setup: $(STAMP) $(GEN_STAMP) node_modules/.installed $(VENDOR_STAMP)

$(STAMP): pyproject.toml constraints.txt clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel -c constraints.txt
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

# The portal's htmx and CSS, from the npm registry at build time; served by the gateway, never a CDN.
$(VENDOR_STAMP): node_modules/.installed scripts/vendor_assets.py
	$(PY) scripts/vendor_assets.py
	touch $@

# Generated code is never committed: it is rebuilt from protos/ into the client package.
$(GEN_STAMP): $(STAMP) $(PROTO_FILES) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py
	$(PIP) install --quiet --no-deps --no-build-isolation -e clients/python
	touch $@

protos: $(STAMP)
	$(PY) scripts/gen_protos.py
	$(PIP) install --quiet --no-deps --no-build-isolation -e clients/python
	touch $(GEN_STAMP)

dist: setup
	rm -rf dist
	$(PY) -m build --no-isolation --wheel --outdir dist clients/python
	$(PY) -m build --no-isolation --wheel --outdir dist .
	@ls -1 dist

run: setup
	$(VENV)/bin/awareness up

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check services tests scripts bench clients/python/src/awareness_client
	$(VENV)/bin/ruff format --check services tests scripts bench clients/python/src/awareness_client
	$(VENV)/bin/mypy
	npx --no-install buf lint
	@# v1 contracts only grow (docs/architecture.md, Conventions); a first commit has nothing to compare.
	@if git rev-parse --verify -q 'HEAD~1^{commit}' >/dev/null 2>&1; then \
		echo "npx --no-install buf breaking --against '.git#ref=HEAD~1'"; \
		npx --no-install buf breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no previous commit to compare with, skipped"; fi

# The whole suite on PostgreSQL and Redis, every benchmark plus end-to-end load, one table:
# 5,000 people cold and warm, the edge alone beside the suite, and wrk's saturation rows when
# wrk is installed (apt-get install wrk; else the Python load generator, said in the row).
bench: setup
	$(PY) -m bench suite

bench-signing: setup
	$(PY) -m bench signing

# Against PostgreSQL, as the ingest target is stated (DATABASE_URL names another server; a
# scratch database is created and dropped there).
bench-ingest: setup
	DATABASE_URL="$${DATABASE_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/test}" $(PY) -m bench ingest

bench-policy: setup
	$(PY) -m bench policy

bench-scoring: setup
	$(PY) -m bench scoring

# Against PostgreSQL like bench-ingest: the real signing, gdpr, ingest and analytics processes; the
# fold rate of 1,000,000 facts into the rollups, risk query latency and the weekly report's time.
bench-analytics: setup
	DATABASE_URL="$${DATABASE_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/test}" $(PY) -m bench analytics

clean:
	rm -rf $(VENV) node_modules clients/python/src build dist .pytest_cache .mypy_cache .ruff_cache
