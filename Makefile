# The README's two commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch by default (taken from the local wheel cache where there is one).
# GPU users: make setup TORCH_PIP_ARGS="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_PIP_ARGS ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast bench mutate lint clean

$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Label Studio for the curation tests, in its own venv: its pins clash with ours (numpy, Django's stack);
# installed against a known-good freeze, like ours.
LABEL_STUDIO_VENV ?= .venv-labelstudio
LABEL_STUDIO_STAMP := $(LABEL_STUDIO_VENV)/.installed-stamp
$(LABEL_STUDIO_STAMP): .ci/labelstudio-constraints.txt
	$(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install --quiet -c .ci/labelstudio-constraints.txt label-studio==1.23.2
	touch $(LABEL_STUDIO_STAMP)

demo: $(STAMP)
	$(BIN)/dropwire demo

test: $(STAMP) $(LABEL_STUDIO_STAMP)
	$(BIN)/python -m pytest -q

# The edit-run loop: unit and property tests only (tests/conftest.py --fast: no test marked slow,
# and a test that starts a process or a server fails there, saying to mark it slow).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q --fast

# make bench runs every benchmark; make bench BENCH="queue kde" runs those named.
BENCH ?=
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks $(BENCH)

# On demand, never in make test: mutation testing of storage/ and the event path, on a copy of
# the tree. make mutate MUTATE="--sample 0 storage/state_machine.py" for every mutant of one module.
MUTATE ?=
mutate: $(STAMP)
	$(BIN)/python -m tests.mutation $(MUTATE)

# The packages install as dropwire.* through setuptools' package-dir mapping, which neither the type
# checker nor import-linter can follow: both read them through the link tree .typecheck/dropwire.
lint: $(STAMP)
	$(BIN)/ruff check .
	PYTHONPATH=.typecheck $(BIN)/lint-imports
	$(BIN)/basedpyright -p .typecheck

clean:
	rm -rf $(VENV) $(LABEL_STUDIO_VENV) .dropwire .pytest_cache .hypothesis
