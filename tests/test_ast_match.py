"""AST match rate: what the sequence keeps and drops, the statement edit, short problems, and the
pruned search agreeing with all pairs."""

import ast

import pytest

from data_gen import ast_match
from data_gen import decontaminate as dc
from data_gen.filtering import inputs


def _unit(code: str) -> ast_match.Unit:
  return ast_match.benchmark_unit(code)


def test_match_rate_ignores_names_literal_values_comments_docstrings():
  a = 'def add(x, y):\n    """Add two numbers."""\n    return x + y * 2\n'
  b = 'def plus(p, q):  # comment\n    """Another docstring."""\n\n    return (p + q * 7)\n'
  seq_a, seq_b = ast_match.node_sequence(ast.parse(a)), ast_match.node_sequence(ast.parse(b))
  assert seq_a == seq_b and ast_match.match_rate(seq_a, seq_b) == 1.0
  c = "def add(x, y):\n    return x - y * 2\n"  # one operator differs: one substitution
  seq_c = ast_match.node_sequence(ast.parse(c))
  assert ast_match.match_rate(seq_a, seq_c) == pytest.approx(1 - 1 / len(seq_a))


def test_builtins_methods_and_literal_types_are_kept():
  """What the code did not choose stays: `len` vs `sum`, `.join` vs `.split`, 1 vs 1.0."""
  base = "def f(s):\n    return len(s)\n"
  for other in ("def f(s):\n    return sum(s)\n", "def f(s):\n    return g(s)\n"):
    assert _unit(base).sequence != _unit(other).sequence
  assert _unit("def f(s):\n    return len(s)\n") == _unit("def g(t):\n    return len(t)\n")
  assert _unit("def f(x):\n    return x.join(y)\n") != _unit("def f(x):\n    return x.split(y)\n")
  assert _unit("def f(x):\n    return x.aa\n") == _unit("def f(x):\n    return x.bb\n")
  assert _unit("def f(x):\n    return x % 1\n") != _unit("def f(x):\n    return x % 1.0\n")
  assert _unit("def f(x):\n    return x % 2\n") == _unit("def f(x):\n    return x % 7\n")


def test_one_inserted_or_removed_statement_is_one_edit():
  solution = _unit("def f(a: int, b: int) -> int:\n    c = a * b\n    return c + a\n")
  inserted = ast_match.corpus_units(
      "def g(x: int, y: int) -> int:\n    z = x * y\n    assert z >= 0\n    return z + x\n")[0]
  n = max(len(solution), len(inserted))
  assert ast_match.match_rate(inserted.sequence, solution.sequence) < 0.8  # 5 nodes inserted
  assert ast_match.unit_match_rate(inserted, solution) == pytest.approx(1 - 1 / n)
  removed = ast_match.corpus_units("def g(x: int, y: int) -> int:\n    return x * y + x\n")[0]
  assert ast_match.unit_match_rate(removed, solution) < 0.8  # not a removal: a rewrite
  dropped = ast_match.corpus_units("def g(x: int, y: int) -> int:\n    return x\n")[0]
  two = _unit("def f(x: int, y: int) -> int:\n    y = 0\n    return x\n")
  assert ast_match.unit_match_rate(dropped, two) == pytest.approx(1 - 1 / len(two))


def test_a_statement_edit_never_empties_a_block_and_big_statements_are_not_small_edits():
  one_line = _unit("def f(a, b):\n    return a * b / 2.0\n")
  assert one_line.statement_less == ()  # the only statement: dropping it leaves any 2-arg function
  big = ("def f(a, b):\n    for i in range(a):\n        for j in range(b):\n"
         "            print(i * j + a - b)\n    return a\n")
  assert all(len(big_unit) - len(v) <= ast_match.STATEMENT_EDIT_MAX_NODES
             for big_unit in [_unit(big)] for v in big_unit.statement_less)


def test_every_humaneval_problem_is_matchable_even_the_shortest():
  problems = dc.load_problems(["humaneval"])
  shortest = min(problems, key=lambda p: len(p.ast_unit))
  assert len(shortest.ast_unit) < 12  # e.g. `return len(string)`: no exemption for it
  index = ast_match.AstIndex([p.ast_unit for p in problems])
  for i, p in enumerate(problems):
    hits = {m.problem: m.tau for m in index.search([p.ast_unit], 0.95)}
    assert hits.get(i) == 1.0, p.task_id


def test_pruned_search_equals_all_pairs():
  problems = [p.ast_unit for p in dc.load_problems(["humaneval"])]
  index = ast_match.AstIndex(problems)
  files = sorted((inputs.default_roots()["stdlib"] / "json").glob("*.py"))
  units = [u for f in files for u in ast_match.corpus_units(f.read_text())]
  units += [ast_match.Unit(problems[i].sequence[:-2]) for i in range(0, 160, 7)]  # near-copies
  units += ast_match.corpus_units("def f(xs):\n    count = 0\n    return sorted(list(set(xs)))\n")
  found = {(m.unit, m.problem): m.tau for m in index.search(units, 0.8)}
  brute = {}
  for ui, u in enumerate(units):
    for pi, p in enumerate(problems):
      tau = ast_match.unit_match_rate(u, p)
      if tau >= 0.8:
        brute[(ui, pi)] = tau
  assert found.keys() == brute.keys()
  assert all(found[k] == pytest.approx(brute[k]) for k in found)
  assert len(found) >= 23  # the near-copies and the statement-edited HumanEval/34
  assert index.pairs_edit_distance < index.pairs_considered  # the length bound does prune
