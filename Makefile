# Two everyday commands (see README): `make demo` and `make test`.
# Both build a local virtual environment on first use. torch is pinned first so pip takes
# the CPU build that lies on this machine instead of downloading a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= attnlab-out

.PHONY: demo test install clean

$(BIN)/.attnlab-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet "torch>=2.4"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.attnlab-installed

demo: install
	$(BIN)/attnlab demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(OUT)
