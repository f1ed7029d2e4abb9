"""Decontamination: AST match rate definition, pruning soundness, and the issue's two acceptance
checks (planted, disguised HumanEval solutions found; few stdlib files flagged)."""

import ast
import builtins
import json
import random

import pytest

from data_gen import ast_match, shards
from data_gen import decontaminate as dc
from data_gen.filtering import embed, ingest


@pytest.fixture(scope="module")
def problems():
  return dc.load_problems(["humaneval", "mbpp"])


# ------------------------------------------------------------------------------- disguising code
class _Renamer(ast.NodeTransformer):
  """Renames every identifier the solution defines or uses (builtins keep their names)."""

  def __init__(self, rng):
    self.names, self.rng = {}, rng

  def new(self, name):
    if name in vars(builtins):
      return name
    if name not in self.names:
      self.names[name] = f"v{self.rng.randrange(10**6)}_{len(self.names)}"
    return self.names[name]

  def visit_Name(self, node):
    node.id = self.new(node.id)
    return node

  def visit_arg(self, node):
    node.arg = self.new(node.arg)
    self.generic_visit(node)
    return node

  def visit_FunctionDef(self, node):
    node.name = self.new(node.name)
    self.generic_visit(node)
    return node


def disguise(code: str, rng: random.Random) -> str:
  """Rename every identifier, replace docstrings, reformat (2-space indent, comments, blanks)."""
  tree = ast.parse(code)
  tree = _Renamer(rng).visit(tree)
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.Module)) and node.body and dc.ast_match._is_docstring(
        node.body[0]):
      node.body[0].value.value = "Reworded task description; see the tests for examples."
  lines = []
  for line in ast.unparse(tree).splitlines():
    indent = len(line) - len(line.lstrip(" "))
    lines.append(" " * (indent // 2) + line.lstrip(" "))
    if line.rstrip().endswith(":"):
      lines.append(" " * (indent // 2 + 2) + "# step")
  out = "# solution\n\n" + "\n\n".join(lines) + "\n"
  ast.parse(out)  # still valid Python
  return out


# ----------------------------------------------------------------------------------- AST measure
def test_match_rate_ignores_names_literals_comments_docstrings():
  a = 'def add(x, y):\n    """Add two numbers."""\n    return x + y * 2\n'
  b = 'def plus(p, q):  # comment\n    """Another docstring."""\n\n    return (p + q * 7)\n'
  tree_a, tree_b = ast.parse(a), ast.parse(b)
  assert ast_match.node_sequence(tree_a) == ast_match.node_sequence(tree_b)
  assert ast_match.match_rate(ast_match.node_sequence(tree_a), ast_match.node_sequence(tree_b)) == 1.0
  c = "def add(x, y):\n    return x - y * 2\n"  # one operator differs: one substitution
  seq_a, seq_c = ast_match.node_sequence(tree_a), ast_match.node_sequence(ast.parse(c))
  assert ast_match.levenshtein(seq_a, seq_c) == 1
  assert ast_match.match_rate(seq_a, seq_c) == pytest.approx(1 - 1 / len(seq_a))


def test_numpy_levenshtein_matches_reference():
  rng = random.Random(0)

  def reference(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
      cur = [i]
      for j, cb in enumerate(b, 1):
        cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
      prev = cur
    return prev[-1]

  for _ in range(200):
    a = "".join(rng.choice("abcd") for _ in range(rng.randrange(0, 30)))
    b = "".join(rng.choice("abcd") for _ in range(rng.randrange(0, 30)))
    assert ast_match._levenshtein_numpy(a, b) == reference(a, b) == ast_match.levenshtein(a, b)


def test_pruned_search_equals_brute_force(problems):
  sequences = [p.ast_sequence for p in problems]
  index = ast_match.AstIndex(sequences, min_nodes=16)
  numpy_index = ast_match.AstIndex(sequences, min_nodes=16, use_rapidfuzz=False)
  files = sorted((ingest.default_roots()["stdlib"] / "json").glob("*.py"))
  units = [u for f in files for u in ast_match.corpus_units(f.read_text())]
  units += [sequences[i][:-2] for i in range(0, 160, 7)]  # near-copies of problems
  found = {(m.unit, m.problem): m.tau for m in index.search(units, 0.8)}
  found_numpy = {(m.unit, m.problem): m.tau for m in numpy_index.search(units, 0.8)}
  brute = {}
  for ui, u in enumerate(units):
    for pi, s in enumerate(sequences):
      if s and max(len(u), len(s)) >= 16 and len(s) >= 16:
        tau = ast_match.match_rate(u, s)
        if tau >= 0.8:
          brute[(ui, pi)] = tau
  assert found.keys() == brute.keys() == found_numpy.keys()
  assert all(found[k] == found_numpy[k] == pytest.approx(brute[k]) for k in found)
  assert index.pairs_edit_distance < index.pairs_considered / 4  # the bounds do prune
  assert numpy_index.pairs_edit_distance < numpy_index.pairs_considered / 100


# ------------------------------------------------------------------------------ acceptance checks
def _stdlib_sample(n: int, seed: int = 0) -> list[dict]:
  records = list(ingest.iter_records("stdlib", check_python=False))
  return random.Random(seed).sample(records, n)


def test_finds_disguised_humaneval_and_spares_stdlib(tmp_path, problems):
  rng = random.Random(0)
  humaneval = [p for p in problems if p.benchmark == "humaneval"]
  planted = [{"id": f"planted:{p.task_id}", "text": disguise(p.code, rng), "source": "planted"}
             for p in humaneval]
  # Half the disguised solutions are buried at the end of a real stdlib file.
  stdlib = _stdlib_sample(300)
  for k in range(0, len(planted), 2):
    host = stdlib[k % len(stdlib)]["text"]
    planted[k]["text"] = host + "\n\n" + planted[k]["text"]
  (tmp_path / "in").mkdir()
  ingest.write_jsonl(stdlib + planted, tmp_path / "in" / "records.jsonl")
  rc = dc.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tasks", "2",
                "--workers", "2"])
  assert rc == 0
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  removed_09 = set(report["taus"]["0.9"]["removed_ids"])
  found = sum(r["id"] in removed_09 for r in planted)
  assert found / len(planted) >= 0.9, f"found only {found}/{len(planted)} planted solutions"
  stdlib_flagged = sum(r["id"] in removed_09 for r in stdlib)
  assert stdlib_flagged / len(stdlib) < 0.02, f"{stdlib_flagged}/{len(stdlib)} stdlib files flagged"
  # Table 3 split: planted problems are "similar"; the split covers each benchmark exactly.
  split = report["taus"]["0.9"]["split"]["humaneval"]
  assert split["n_similar"] >= found and split["n_similar"] + split["n_non_similar"] == 164
  assert report["taus"]["0.95"]["removed"] <= report["taus"]["0.8"]["removed"]
  assert report["measures"]["embedding"]["enabled"] is False
  assert "off" in report["measures"]["embedding"]["reason"]
  # flagged.jsonl: one line per flagged (record, problem) pair with the contract's fields.
  lines = [json.loads(l) for l in (tmp_path / "out" / "flagged.jsonl").read_text().splitlines()]
  assert lines and all(set(l) == {"id", "benchmark", "task_id", "ngram", "embedding_distance",
                                  "ast_match"} for l in lines)
  assert all(l["embedding_distance"] is None for l in lines)
  hit = [l for l in lines if l["id"] == "planted:HumanEval/0" and l["task_id"] == "HumanEval/0"]
  assert hit and hit[0]["ast_match"] == 1.0
  # The pruned copy holds exactly the records not removed at that tau.
  pruned = [r["id"] for r in shards.read_records(str(tmp_path / "out" / "pruned" / "tau_0.9"))]
  assert sorted(pruned) == sorted({r["id"] for r in stdlib + planted} - removed_09)
  # The same command again: every task is finished, nothing is scanned twice.
  before = (tmp_path / "out" / "report.json").read_bytes()
  assert dc.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tasks", "2",
                  "--workers", "2"]) == 0
  assert (tmp_path / "out" / "report.json").read_bytes() == before


def test_ngram_and_embedding_measures(tmp_path, problems):
  he0 = next(p for p in problems if p.task_id == "HumanEval/0")
  records = [
      {"id": "copied-docstring", "text": "# notes\n" + he0.prose, "source": "t"},
      {"id": "unrelated", "text": "x = 1\nprint('hello world')\n", "source": "t"},
      {"id": "verbatim-code", "text": he0.code, "source": "t"},
  ]
  config = dc.Config(workers=1)
  result = dc.decontaminate(records, problems, config, embedder=embed.HashingEmbedder())
  by_id = {}
  for p in result["pairs"]:
    if p["task_id"] == "HumanEval/0":
      by_id[p["id"]] = p
  assert by_id["copied-docstring"]["ngram"] > 0
  assert by_id["verbatim-code"]["embedding_distance"] == pytest.approx(0.0, abs=1e-3)
  assert by_id["verbatim-code"]["ast_match"] == 1.0
  assert "unrelated" not in by_id
  report = dc.build_report(result, problems, config, embed.HashingEmbedder())
  assert report["measures"]["embedding"]["enabled"] is True
  assert "copied-docstring" in report["taus"]["0.95"]["removed_ids"]  # n-gram removes at every tau


def test_bad_inputs(tmp_path, capsys):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "r.jsonl").write_text(json.dumps({"text": "x = 1"}) + "\n")
  assert dc.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
  assert "--id-field" in capsys.readouterr().err
  assert dc.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                  "--bench", "apps"]) == 2
  assert "unknown benchmark" in capsys.readouterr().err
  assert dc.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--bench", "mbpp",
                  "--mbpp-path", str(tmp_path / "nope.jsonl"), "--assign-ids"]) == 2
  assert "--mbpp-path" in capsys.readouterr().err


def test_code_inside_prose_is_checked(problems):
  """Synthetic textbooks and Q/A records hold code in fenced blocks inside prose."""
  he = next(p for p in problems if p.task_id == "HumanEval/12")
  disguised = disguise(he.code, random.Random(1))
  text = f"## Longest string\n\nWe walk the list once.\n\n```python\n{disguised}```\n\nDone.\n"
  assert ast_match.corpus_units(text) is None  # the whole record is not Python
  result = dc.decontaminate([{"id": "book", "text": text}], problems, dc.Config(workers=1))
  taus = {p["task_id"]: p["ast_match"] for p in result["pairs"]}
  assert taus.get("HumanEval/12") == 1.0
