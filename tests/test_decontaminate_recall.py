"""Decontamination recall per disguise kind, with the embedding measure on (the default removes a
record that the embedding OR the AST measure flags; the tests' embedder is the hashing embedder,
CodeGen's weights being unavailable offline), and the share of clean standard-library files flagged.

Each kind starts from a HumanEval solution (prompt + reference) and applies one edit, then the
cosmetic disguise (renamed identifiers, a new docstring, reformatting; tests/test_decontaminate.py):
  cosmetic        nothing more: what the AST measure is blind to by design;
  inserted        one statement inserted (one AST edit);
  reordered       two adjacent independent statements swapped;
  loop_comp       `x = []; for ...: x.append(e)` <-> `x = [e for ...]`, either way;
  helper          the body moved into a helper function that the original calls.
Kinds whose edit does not apply to a solution skip it. `pytest -s` prints the table the README cites.
"""

import ast
import copy
import random

import pytest

from data_gen import decontaminate as dc
from data_gen.filtering import embed, ingest
from test_decontaminate import disguise

TAU = 0.8
STDLIB_FILES = 300
# The measured recall (all 164 solutions; the README table) less a margin of a few solutions.
MIN_RECALL = {"cosmetic": 0.95, "inserted": 0.95, "reordered": 0.85, "loop_comp": 0.25,
              "helper": 0.9}


def _function(tree: ast.Module) -> ast.FunctionDef:
  return [n for n in tree.body if isinstance(n, ast.FunctionDef)][-1]


def _body_start(fn) -> int:
  first = fn.body[0]
  return int(isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
             and isinstance(first.value.value, str))


def _names(node, ctx) -> set[str]:
  return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def reorder(tree: ast.Module) -> bool:
  """Swap the first two adjacent simple statements (in any block) that do not touch each other's
  names."""
  simple = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)
  for node in ast.walk(_function(tree)):
    for field in ("body", "orelse"):
      block = getattr(node, field, None)
      if not isinstance(block, list):
        continue
      for i in range(len(block) - 1):
        a, b = block[i], block[i + 1]
        if not (isinstance(a, simple) and isinstance(b, simple)):
          continue
        if isinstance(a, ast.Expr) and isinstance(a.value, ast.Constant):
          continue  # a docstring
        wa, wb = _names(a, ast.Store), _names(b, ast.Store)
        ra, rb = _names(a, ast.Load), _names(b, ast.Load)
        if not (wa & (rb | wb) or wb & ra) and not (isinstance(a, ast.AugAssign)
                                                    or isinstance(b, ast.AugAssign)):
          block[i], block[i + 1] = b, a
          return True
  return False


def loop_comprehension(tree: ast.Module) -> bool:
  """`x = []` + `for t in it: [if c:] x.append(e)` -> `x = [e for t in it if c]`; or a list
  comprehension assigned or returned -> that loop."""
  fn = _function(tree)
  for node in ast.walk(fn):
    block = getattr(node, "body", None)
    if not isinstance(block, list):
      continue
    for i in range(len(block) - 1):
      init, loop = block[i], block[i + 1]
      if not (isinstance(init, ast.Assign) and isinstance(init.value, ast.List)
              and not init.value.elts and len(init.targets) == 1
              and isinstance(init.targets[0], ast.Name) and isinstance(loop, ast.For)
              and not loop.orelse and len(loop.body) == 1):
        continue
      inner, conds = loop.body[0], []
      if isinstance(inner, ast.If) and not inner.orelse and len(inner.body) == 1:
        conds, inner = [inner.test], inner.body[0]
      call = getattr(inner, "value", None)
      if (isinstance(inner, ast.Expr) and isinstance(call, ast.Call)
          and isinstance(call.func, ast.Attribute) and call.func.attr == "append"
          and isinstance(call.func.value, ast.Name) and call.func.value.id == init.targets[0].id
          and len(call.args) == 1):
        comp = ast.ListComp(call.args[0], [ast.comprehension(loop.target, loop.iter, conds, 0)])
        block[i:i + 2] = [ast.Assign([init.targets[0]], comp, lineno=0)]
        return True
  for node in ast.walk(fn):
    block = getattr(node, "body", None)
    if not isinstance(block, list):
      continue
    for i, stmt in enumerate(block):
      comp = getattr(stmt, "value", None)
      if (isinstance(stmt, (ast.Return, ast.Assign)) and isinstance(comp, ast.ListComp)
          and len(comp.generators) == 1 and not comp.generators[0].is_async):
        gen = comp.generators[0]
        append = ast.Expr(ast.Call(ast.Attribute(ast.Name("result_", ast.Load()), "append",
                                                 ast.Load()), [comp.elt], []))
        for cond in reversed(gen.ifs):
          append = ast.If(cond, [append], [])
        loop = ast.For(gen.target, gen.iter, [append], [], lineno=0)
        stmt.value = ast.Name("result_", ast.Load())
        block[i:i + 1] = [ast.parse("result_ = []").body[0], loop, stmt]
        return True
  return False


def extract_helper(tree: ast.Module) -> bool:
  """The function's body (after its docstring) becomes `_helper(args)`, which the function
  returns."""
  fn = _function(tree)
  start = _body_start(fn)
  if fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or len(fn.body) <= start:
    return False
  args = [a.arg for a in fn.args.args]
  helper = ast.FunctionDef("_helper", copy.deepcopy(fn.args), fn.body[start:], [], None,
                           type_params=[], lineno=0)
  for a in helper.args.args:
    a.annotation = None
  call = ast.Call(ast.Name("_helper", ast.Load()), [ast.Name(a, ast.Load()) for a in args], [])
  fn.body[start:] = [ast.Return(call)]
  tree.body.insert(tree.body.index(fn), helper)
  return True


EDITS = {"cosmetic": None, "inserted": "insert", "reordered": reorder,
         "loop_comp": loop_comprehension, "helper": extract_helper}


def planted_records(problems, seed: int = 0) -> dict[str, list[dict]]:
  rng, out = random.Random(seed), {}
  for kind, edit in EDITS.items():
    rows = []
    for p in problems:
      if edit is None or edit == "insert":
        text = disguise(p.code, rng, insert=edit == "insert")
      else:
        tree = ast.parse(p.code)
        if not edit(tree):
          continue
        text = disguise(ast.unparse(ast.fix_missing_locations(tree)), rng, insert=False)
      rows.append({"id": f"{kind}:{p.task_id}", "text": text})
    out[kind] = rows
  return out


@pytest.fixture(scope="module")
def scanned():
  problems = dc.load_problems(["humaneval"])
  planted = planted_records(problems)
  stdlib = random.Random(0).sample(list(ingest.iter_records("stdlib", check_python=False)),
                                   STDLIB_FILES)
  records = [r for rows in planted.values() for r in rows] + [
      {"id": f"stdlib:{r['id']}", "text": r["text"]} for r in stdlib]
  config = dc.Config(workers=1, calibration_size=300)
  result = dc.decontaminate(records, problems, config, embedder=embed.HashingEmbedder())
  assert result["embed_threshold"] is not None  # the embedding measure is on

  def found(by):
    kept = dc.removed_at(result["pairs"], TAU, dc.Config(remove_by=by), result["embed_threshold"])
    return {p["id"] for p in kept}

  return problems, planted, stdlib, {"ast": found(("ast",)), "embedding": found(("embedding",)),
                                     "union": found(config.remove_by)}


def test_recall_per_disguise_kind(scanned):
  problems, planted, _, found = scanned
  print(f"\ndecontamination recall at tau {TAU} (hashing embedder):")
  print(f"{'kind':10s} {'n':>4s} {'AST':>6s} {'embed':>6s} {'union':>6s}")
  recall = {}
  for kind, rows in planted.items():
    ids = [r["id"] for r in rows]
    share = {m: sum(i in found[m] for i in ids) / len(ids) for m in found}
    recall[kind] = share["union"]
    print(f"{kind:10s} {len(ids):4d} {share['ast']:6.1%} {share['embedding']:6.1%} "
          f"{share['union']:6.1%}")
  assert len(planted["cosmetic"]) == len(planted["inserted"]) == len(problems) == 164
  assert len(planted["helper"]) > 150 and len(planted["reordered"]) > 40
  assert len(planted["loop_comp"]) > 15
  for kind, floor in MIN_RECALL.items():
    assert recall[kind] >= floor, (kind, recall[kind])


def test_stdlib_files_flagged(scanned):
  """The AST measure flags few clean files. The hashing embedder's threshold is calibrated on single
  functions (1% of them within it), but a record is a whole file with many functions, so with it on
  far more files are flagged (measured: 23%): the number the README gives beside the recall."""
  _, _, stdlib, found = scanned
  flagged = {m: sum(f"stdlib:{r['id']}" in ids for r in stdlib) for m, ids in found.items()}
  print(f"\nstdlib files flagged at tau {TAU} of {len(stdlib)}: {flagged}")
  assert flagged["ast"] / len(stdlib) < 0.02
  assert flagged["union"] / len(stdlib) < 0.3
