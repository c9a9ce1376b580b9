# Two entry points a fresh machine needs (Python 3.11+, git, make): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench bench-delivery bench-feeds clean

# Set up, then run postroom's main job on the embedded defaults: the sample posts in posts/,
# feeds into public/, the digest into the Maildir var/maildir/.
run: $(VENV)/.installed
	$(BIN)/postroom build
	$(BIN)/postroom digest send

# Set up, then run the whole test suite (lint and type checks first: they are the cheapest).
# Two workers: much of the suite waits on real processes and servers, and the machines
# have two cores.
test: $(VENV)/.installed lint
	$(BIN)/pytest -q -n 2

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Every benchmark (bench-delivery, then bench-feeds), each into its section of bench/RESULTS.md.
# BENCH_ARGS=--quick for a smoke run of a few minutes.
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# postroom's digest send against Postfix's smtp-source, both into smtp-sink on 127.0.0.1, and a
# big subscriber import; writes bench/RESULTS.md. Installs Debian's postfix (unconfigured) if
# its test tools are missing. BENCH_ARGS=--quick (a minute) or BENCH_ARGS=--full (1,000,000).
bench-delivery: $(VENV)/.installed
	$(BIN)/python bench/delivery.py $(BENCH_ARGS)

# postroom's cold and warm builds against Hugo and Pelican on one generated corpus (1,000 and
# 10,000 posts), its in-daemon rescan and one-post edit, and `postroom serve` against nginx
# under wrk (200s and 304s); writes bench/RESULTS.md. Installs Debian's hugo, nginx-light and
# wrk if missing, and Pelican into bench/.cache/. BENCH_ARGS=--quick: 1,000 posts, 1 repeat.
bench-feeds: $(VENV)/.installed
	$(BIN)/python bench/feeds.py $(BENCH_ARGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) public var .pytest_cache .mypy_cache .ruff_cache .hypothesis
