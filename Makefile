# bgwlab: `make test` and `make lab` set everything up themselves.  Linux (kernel >= 5.3)
# only: elsewhere they say what to do instead (WSL 2, the devcontainer, a Linux VM).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: platform-check setup system-deps test lab book student-copy stress bench bench-quick bench-tail soak clean

# The system as `uname -s` names it.  `make UNAME_S=Darwin lab` shows what a Mac user sees.
ifndef UNAME_S
ifeq ($(OS),Windows_NT)
UNAME_S := Windows_NT
else
UNAME_S := $(shell uname -s 2>/dev/null)
endif
endif

# The same words as bgwlab/platform_check.py (MACOS, WINDOWS; tests/test_platform.py checks).
ifeq ($(UNAME_S),Darwin)
define PLATFORM_HELP
bgwlab's engine (Cluster, the postmaster) needs Linux, kernel >= 5.3 (for pidfds);
this is macOS, which has no pidfd_open, eventfd or pipe2.
What to do on macOS: open the project in its devcontainer (.devcontainer/, with Docker
Desktop, OrbStack or Colima; VS Code: "Dev Containers: Reopen in Container"), or in a
Linux VM (UTM, Multipass, Lima), and run `make lab` there.
(`import bgwlab`, WorkerSpec, Event and read_events do work here.)
endef
else ifneq ($(filter MINGW% MSYS% CYGWIN% Windows_NT,$(UNAME_S)),)
define PLATFORM_HELP
bgwlab's engine (Cluster, the postmaster) needs Linux, kernel >= 5.3 (for pidfds);
this is Windows, which has no fork, pidfd_open, eventfd or fcntl.
What to do on Windows: use WSL 2 (PowerShell: `wsl --install`, then open Ubuntu), clone
the project inside it (e.g. ~/bgwlab, not under /mnt/c) and run `make lab` there; or open
it in its devcontainer (.devcontainer/) with Docker Desktop.
(`import bgwlab`, WorkerSpec, Event and read_events do work here.)
endef
else
define PLATFORM_HELP
bgwlab's engine (Cluster, the postmaster) needs Linux, kernel >= 5.3 (for pidfds);
this is $(or $(UNAME_S),a system that uname does not name).
What to do: use a Linux machine or VM, or the project's devcontainer (.devcontainer/),
and run `make lab` there.
(`import bgwlab`, WorkerSpec, Event and read_events do work here.)
endef
endif

# Setting up, testing and the lab need Linux: refuse first, with what to do, before
# installing anything.  (`make` alone still means setup.)
.DEFAULT_GOAL := $(STAMP)
platform-check:
ifneq ($(UNAME_S),Linux)
	$(info $(PLATFORM_HELP))
	@exit 1
endif

$(STAMP): pyproject.toml | platform-check
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[notebooks,dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the test suite needs (e.g. Chromium for the browser check).
system-deps: platform-check
	bash scripts/system-deps.sh

test: platform-check setup system-deps
	$(PY) -m pytest

# JupyterLab on notebooks/, for root too (CI, containers: Jupyter refuses root without
# --allow-root), listening on localhost only.  Without a display no browser is opened:
# open the URL it prints (with its ?token=).  Stop it with Ctrl-C twice.  Overrides, e.g.
#   make lab LAB_IP=0.0.0.0 LAB_ARGS=--port=9999   # in a container whose port you publish
#   make lab LAB_BROWSER=                          # try to open a browser anyway
LAB_IP      ?= localhost
LAB_BROWSER ?= $(if $(DISPLAY)$(WAYLAND_DISPLAY),,--no-browser)
LAB_ROOT     = $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS    ?=

lab: platform-check setup
	$(VENV)/bin/jupyter lab --ip=$(LAB_IP) $(LAB_BROWSER) $(LAB_ROOT) $(LAB_ARGS) notebooks/

# The offline book: every notebook executed (full trial counts; BGWLAB_QUICK=1 make book for
# the quick ones), with its figures, plus the README and the teaching guide, as static HTML
# in build/book/ (open build/book/index.html; nothing is fetched from the network).
book: platform-check setup
	$(PY) scripts/build_book.py --out build/book

# The notebooks without their solutions (cells tagged "solution"), for students.
student-copy: setup
	$(PY) scripts/student_copy.py

# The suite (or part of it) many times as CI meets it: fresh clones, cold page cache,
# bytecode not written, the other CPUs busy.  make stress STRESS_ARGS="-n 20 -- tests/x.py"
stress:
	bash scripts/stress.sh $(STRESS_ARGS)

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/bench_parallel.py
	$(PY) benchmarks/bench_query4.py

bench-quick: setup
	$(PY) benchmarks/run.py --quick
	$(PY) benchmarks/bench_parallel.py --quick
	$(PY) benchmarks/bench_query4.py --quick

bench-tail: setup  # root only: the start tail under ftrace's scheduler events
	$(PY) benchmarks/tail_trace.py --rounds 300 --out data/bench

soak: setup
	BGWLAB_SOAK_SECONDS=$${BGWLAB_SOAK_SECONDS:-300} $(PY) -m pytest -m soak -p no:cacheprovider tests

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
