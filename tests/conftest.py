"""Test set-up shared by every test module.

JAX sees 8 fake CPU devices so sharding tests run here exactly as on an 8-GPU node. This must happen
before jax is imported anywhere, hence at conftest import time.

Hermetic: HOME, the XDG cache, the project's cache (PHI1_CACHE) and matplotlib's config point into one
temporary directory per session, so no test reads or writes the user's home directory, and what one
session cached never leaks into the next. Subprocess trainings inherit these variables, and with them
one persistent JAX compilation cache: identical programs (the tiny test models) compile once per
session instead of once per process.

A skip that hides a missing capability the machine is known to have is a failure:
PHI1_TESTS_REQUIRE (set by .ci/run, e.g. "root,bwrap,cgroups") lists the capabilities; a test
marked `requires(<capability>)`, or whose skip reason names it, fails instead of skipping.
"""

import atexit
import json
import os
import pathlib
import re
import shutil
import sysconfig
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SESSION_DIR = pathlib.Path(tempfile.mkdtemp(prefix="phi1-tests-"))
_SESSION_PID = os.getpid()


def _remove_session_dir():
  if os.getpid() == _SESSION_PID:  # a forked child inherits this handler: only the session removes
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


atexit.register(_remove_session_dir)
for name, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "home/.cache"),
                  ("XDG_CONFIG_HOME", "home/.config"), ("XDG_DATA_HOME", "home/.local/share"),
                  ("PHI1_CACHE", "home/.cache/phi1"), ("MPLCONFIGDIR", "home/.config/matplotlib"),
                  ("HF_HOME", "home/.cache/huggingface")):
  os.environ[name] = str(SESSION_DIR / sub)
  (SESSION_DIR / sub).mkdir(parents=True, exist_ok=True)
# A persistent compilation cache (kept across sessions only if the caller names one), caching
# every program: the defaults skip programs that compile in under a second, i.e. all of ours.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(SESSION_DIR / "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402  (after the environment is set)

# Capability -> skip reasons that mean "this machine lacks it".
CAPABILITY_REASONS = {
    "root": re.compile(r"\broot\b|CAP_SYS_ADMIN|setuid", re.I),
    "bwrap": re.compile(r"bwrap|bubblewrap", re.I),
    "cgroups": re.compile(r"cgroup", re.I),
    "slurm": re.compile(r"slurm|sbatch|slurmctld", re.I),
}


def required_capabilities() -> set[str]:
  names = {n.strip() for n in os.environ.get("PHI1_TESTS_REQUIRE", "").split(",") if n.strip()}
  unknown = names - set(CAPABILITY_REASONS)
  if unknown:
    raise pytest.UsageError(f"PHI1_TESTS_REQUIRE names unknown capabilities {sorted(unknown)}; "
                            f"known: {sorted(CAPABILITY_REASONS)}")
  return names


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "requires(capability): the test needs root, bwrap, cgroups or slurm; skipping it "
      "fails the run when PHI1_TESTS_REQUIRE lists that capability")
  config._phi1_required = required_capabilities()


def _skip_reason(report) -> str:
  longrepr = report.longrepr
  if isinstance(longrepr, tuple) and len(longrepr) == 3:
    return str(longrepr[2])
  return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  required = item.config._phi1_required
  if not (report.skipped and required):
    return
  reason = _skip_reason(report)
  marked = {m.args[0] for m in item.iter_markers("requires") if m.args}
  missing = sorted(c for c in required if c in marked or CAPABILITY_REASONS[c].search(reason))
  if missing:
    report.outcome = "failed"
    report.longrepr = (f"skipped, but this machine must run it (PHI1_TESTS_REQUIRE needs "
                       f"{', '.join(missing)}): {reason}")


@pytest.fixture(scope="module")
def quick_compiles():
  """Compile without XLA optimisations for a module whose programs run only a few times (Pallas
  interpret-mode kernels): optimising that code costs more time than it saves."""
  import jax
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def stdlib_corpus(tmp_path_factory):
  """120 real stdlib files (4,000 characters each) as JSON lines, and a 512-piece tokenizer trained
  on them; built once per session for every module that trains a tiny model."""
  from phi1.tokenizer import train_sentencepiece
  out = tmp_path_factory.mktemp("stdlib_corpus")
  files = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:120]
  texts = [f.read_text(encoding="utf-8", errors="replace")[:4000] for f in files]
  with open(out / "train.jsonl", "w") as f:
    for i, text in enumerate(texts):
      f.write(json.dumps({"id": str(i), "text": text, "source": "stdlib"}) + "\n")
  tok = train_sentencepiece(texts, out / "tok.model", vocab_size=512)
  return {"train": str(out / "train.jsonl"), "tokenizer": str(out / "tok.model"),
          "vocab": tok.vocab_size}


def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`), each test file runs on one
  worker, so its module fixtures are built once; the files that share the one-node Slurm cluster
  form a single group, so one cluster serves them. That group goes first: its tests mostly wait on
  the scheduler, which overlaps well with the CPU-bound files on the other worker."""
  def group(item):
    return "slurm" if hasattr(item.module, "slurm_cluster") else item.nodeid.split("::")[0]
  for item in items:
    item.add_marker(pytest.mark.xdist_group(group(item)))
  items.sort(key=lambda item: group(item) != "slurm")  # stable: file order kept otherwise
