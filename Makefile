# Two commands set everything up: `make demo` and `make test`. Both are fast when nothing changed:
# installs are keyed on pyproject.toml, models are cached by the model store.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPECVOICE := $(VENV)/bin/specvoice
# The CPU build of torch; a looser pin pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test install install-test models system-deps lint clean

demo: $(VENV)/.installed models
	$(SPECVOICE) reply assets/question.wav -o reply.wav

test: $(VENV)/.installed-test models system-deps
	$(PY) -m pytest

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH) -e '.[test]'
	touch $@

models: $(VENV)/.installed
	$(SPECVOICE) models pull

system-deps:
	bash scripts/system-deps.sh

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) reply.wav
