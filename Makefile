# Two entry points (README): `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs what it needs on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
WORKDIR ?= workdir/demo
PYTEST_ARGS ?=

.PHONY: demo test install system-deps clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test,hf,ray]"
	touch $@

# The evaluation sandbox uses bubblewrap for its allow-listed filesystem view where it can (root
# only) and libseccomp for its system-call filter (pyseccomp binds it; Debian ships it as libseccomp2).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p | grep -q libseccomp.so.2; }; then \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2 >/dev/null) \
	  || echo "warning: could not install bubblewrap/libseccomp2; the sandbox says which protections are off"; \
	fi
	@# The Slurm tests start a one-node cluster (tests/slurm_cluster.py): slurmctld, slurmd, munged.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; }; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
	  || echo "warning: could not install slurm-wlm/munge; the Slurm tests skip and say so"; \
	fi

install: $(VENV)/.installed system-deps

demo: install
	$(VENV)/bin/phi1 demo --workdir $(WORKDIR)

# -rs prints why each skipped test skipped; --durations the slowest steps (CI keeps an eye on both).
# Each run gets its own fresh base temp directory, so no earlier run's leftovers are swept up by it.
# TEST_WORKERS pytest-xdist workers (2: many tests wait on subprocesses, the sandbox or the Slurm
# scheduler, so a lone worker keeps two cores ~half idle); each file stays on one worker
# (tests/conftest.py). Every worker holds 8 host devices and up to ~6 GB: raise it with care.
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/python -m pytest tests -q -p no:cacheprovider -rs --durations=15 \
	  -n $(TEST_WORKERS) --dist loadgroup \
	  --basetemp="$$(mktemp -d -t phi1-tests.XXXXXX)" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
