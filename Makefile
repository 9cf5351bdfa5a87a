# noops: the two commands are `make demo` (build the examples, serve one) and `make test`.
# Both install what is missing first, so they work on a fresh Debian 12 machine as root.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
NOOPS := $(VENV)/bin/noops
APT_PACKAGES := runc mmdebstrap skopeo umoci docker-registry python3-venv ca-certificates \
	iproute2 postgresql curl chromium python3-dev gcc libssl-dev
# the peers the benchmarks measure against
BENCH_PACKAGES := buildah fuse-overlayfs nginx wrk gcc libc6-dev
PYTEST_ARGS ?=

.PHONY: deps apt demo test lint bench clean

# apt first: pip install builds the native OTLP decoder and audit chain (gcc, python3-dev, libssl-dev)
deps:
	@$(MAKE) --no-print-directory apt PACKAGES="$(APT_PACKAGES)"
	@$(MAKE) --no-print-directory $(VENV)/.installed

apt:
	@missing=""; for p in $(PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: deps
	$(PY) -m noops.demo

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: deps
	@$(MAKE) --no-print-directory apt PACKAGES="$(BENCH_PACKAGES)"
	$(PY) bench/build.py
	$(PY) bench/deploy.py
	$(PY) bench/proxy.py
	$(PY) bench/gateway.py
	$(PY) bench/gateway_floor.py
	$(PY) bench/console.py
	$(PY) bench/telemetry.py
	$(PY) bench/duckdb_floor.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
