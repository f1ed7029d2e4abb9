"""HumanEval through the sandbox: every canonical solution passes, every `pass` body fails, and the
post-processing conventions cut a continuation where they say they do."""

import pytest

from phi1.evals import humaneval, postprocess
from phi1.evals.sandbox import Sandbox


@pytest.fixture(scope="module")
def tasks():
  return humaneval.load()


@pytest.fixture(scope="module")
def sandbox():
  with Sandbox(workers=2, timeout_s=5.0) as sb:
    yield sb


def test_the_packaged_file_has_164_problems(tasks):
  assert [t.task_id for t in tasks] == [f"HumanEval/{i}" for i in range(164)]
  for t in tasks:
    assert t.prefix == t.prompt and t.test.rstrip().endswith(f"check({t.entry_point})")


def test_canonical_solutions_pass_and_pass_bodies_fail(tasks, sandbox):
  results = sandbox.run([t.program(t.reference) for t in tasks] +
                        [t.program("    pass\n") for t in tasks])
  canonical, stubs = results[:164], results[164:]
  assert [t.task_id for t, r in zip(tasks, canonical) if not r.passed] == []
  assert [t.task_id for t, r in zip(tasks, stubs) if r.passed] == []
  assert {r.status for r in stubs} <= {"failed", "error"}


def test_postprocessing_recovers_the_solution_from_a_rambling_continuation(tasks, sandbox):
  chosen = tasks[:12]
  tail = "\n\nprint(undefined_name)\ndef helper():\n    return 0\n"
  raws = [t.reference + tail for t in chosen]
  stops = [postprocess.postprocess(r, "stops", postprocess.HUMANEVAL_STOPS) for r in raws]
  unindented = [postprocess.postprocess(r, "unindented", ()) for r in raws]
  untouched = [postprocess.postprocess(r, "none", ()) for r in raws]
  results = sandbox.run([t.program(c) for group in (stops, unindented, untouched)
                        for t, c in zip(chosen, group)])
  n = len(chosen)
  assert all(r.passed for r in results[:2 * n])
  assert all(r.status == "error" and "NameError" in r.error for r in results[2 * n:])


def test_cutting_rules():
  body = "    x = 1\n\n    # a comment in the body\n    return x\n"
  assert postprocess.cut_at_first_unindented(body + "# trailing\ndef g():\n  pass\n") == body
  assert postprocess.cut_at_stops(body + "\nclass A:\n  pass", postprocess.HUMANEVAL_STOPS) == body
  assert postprocess.cut_at_stops("a\nif x\nprint(1)", ["\nprint", "\nif"]) == "a"
  assert postprocess.cut_at_stops("no stop here", ["\nclass"]) == "no stop here"
  with pytest.raises(ValueError, match="unknown post-processing"):
    postprocess.postprocess("x", "bogus", ())
