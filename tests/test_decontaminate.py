"""Decontamination: the paper's defaults (Table 3: HumanEval, embedding + AST, n-grams reported),
the report, and the acceptance check: disguised copies of all 164 HumanEval solutions found at
tau 0.8, few standard-library files flagged. The AST measure itself: tests/test_ast_match.py."""

import ast
import builtins
import json
import random

import numpy as np
import pytest

from data_gen import ast_match, shards
from data_gen import decontaminate as dc
from data_gen import decontaminate_cli as dc_cli
from data_gen import decontaminate_report
from data_gen.filtering import embed, ingest


@pytest.fixture(scope="module")
def problems():
  return dc.load_problems(["humaneval"])


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


# Statements an editor might add to a copied solution: a counter, a debug print, a guard.
INSERTED = ("count = 0", "print(value)", "assert n >= 0", "result = []",
            "if not items:\n    return None")


def insert_statement(tree: ast.Module, rng: random.Random) -> None:
  """One statement from INSERTED at a random place in the last function's body."""
  fn = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)][-1]
  first = 1 if ast_match._is_docstring(fn.body[0]) else 0
  fn.body.insert(rng.randint(first, len(fn.body)), ast.parse(rng.choice(INSERTED)).body[0])


def disguise(code: str, rng: random.Random, insert: bool = True) -> str:
  """Rename every identifier, replace docstrings, reformat (2-space indent, comments, blanks) and,
  with `insert`, add one statement."""
  tree = ast.parse(code)
  if insert:
    insert_statement(tree, rng)
  tree = _Renamer(rng).visit(tree)
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.Module)) and node.body and ast_match._is_docstring(
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


# ------------------------------------------------------------------------------ acceptance checks
def _stdlib_sample(n: int, seed: int = 0) -> list[dict]:
  records = list(ingest.iter_records("stdlib", check_python=False))
  return random.Random(seed).sample(records, n)


def test_finds_disguised_humaneval_and_spares_stdlib(tmp_path, problems, capsys):
  """Issue acceptance: disguised copies (renamed identifiers, new docstring, reformatted, one
  statement inserted) of all 164 HumanEval solutions, >= 95% found at tau 0.8, and < 2% of
  standard-library files flagged at tau 0.8, with the default settings."""
  rng = random.Random(0)
  assert len(problems) == 164
  planted = [{"id": f"planted:{p.task_id}", "text": disguise(p.code, rng), "source": "planted"}
             for p in problems]
  # Half the disguised solutions are buried at the end of a real stdlib file.
  stdlib = _stdlib_sample(500)
  for k in range(0, len(planted), 2):
    host = stdlib[k % len(stdlib)]["text"]
    planted[k]["text"] = host + "\n\n" + planted[k]["text"]
  (tmp_path / "in").mkdir()
  ingest.write_jsonl(stdlib + planted, tmp_path / "in" / "records.jsonl")
  rc = dc_cli.main(["--embedder", "none", "--input", str(tmp_path / "in"), "--out",
                    str(tmp_path / "out"), "--tasks", "2", "--workers", "2"])
  assert rc == 0
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["benchmarks"] == {"humaneval": 164}  # Table 3's benchmark only, by default
  removed = {t: set(v["removed_ids"]) for t, v in report["taus"].items()}
  found = {t: sum(r["id"] in ids for r in planted) for t, ids in removed.items()}
  flagged = {t: sum(r["id"] in ids for r in stdlib) for t, ids in removed.items()}
  print(f"planted found {found}, stdlib flagged {flagged} of {len(stdlib)}")
  assert found["0.8"] / len(planted) >= 0.95, f"found only {found['0.8']}/{len(planted)}"
  assert flagged["0.8"] / len(stdlib) < 0.02, f"{flagged['0.8']}/{len(stdlib)} stdlib files flagged"
  assert found["0.95"] <= found["0.9"] <= found["0.85"] <= found["0.8"]
  # Table 3 split at every tau: planted problems are "similar"; the split covers the benchmark.
  for tau, v in report["taus"].items():
    split = v["split"]["humaneval"]
    assert split["n_similar"] >= found[tau] and split["n_similar"] + split["n_non_similar"] == 164
  assert report["measures"]["embedding"]["enabled"] is False
  assert "off" in report["measures"]["embedding"]["reason"]
  # The removed counts are printed beside the paper's.
  err = capsys.readouterr().err
  assert "tau 0.95: removed" in err and "paper: 42.5K of 879.5K" in err
  assert "paper: 354K of 879.5K" in err and "(paper: 116 similar)" in err
  # flagged.jsonl: one line per flagged (record, problem) pair with the contract's fields.
  lines = [json.loads(l) for l in (tmp_path / "out" / "flagged.jsonl").read_text().splitlines()]
  assert lines and all(set(l) == {"id", "benchmark", "task_id", "ngram", "embedding_distance",
                                  "ast_match"} for l in lines)
  assert all(l["embedding_distance"] is None for l in lines)
  hit = [l for l in lines if l["id"] == "planted:HumanEval/0" and l["task_id"] == "HumanEval/0"]
  assert hit and hit[0]["ast_match"] >= 0.95  # one inserted statement: one edit
  # The pruned copy holds exactly the records not removed at that tau.
  pruned = [r["id"] for r in shards.read_records(str(tmp_path / "out" / "pruned" / "tau_0.8"))]
  assert sorted(pruned) == sorted({r["id"] for r in stdlib + planted} - removed["0.8"])
  # The same command again: every task is finished, nothing is scanned twice.
  before = (tmp_path / "out" / "report.json").read_bytes()
  assert dc_cli.main(["--embedder", "none", "--input", str(tmp_path / "in"), "--out",
                    str(tmp_path / "out"), "--tasks", "2",
                  "--workers", "2"]) == 0
  assert (tmp_path / "out" / "report.json").read_bytes() == before


def test_a_finished_run_is_keyed_by_content_not_paths(tmp_path, problems, capsys):
  """The input and the benchmark file moved elsewhere keep a finished run; a benchmark file
  rewritten (one problem's solution changed) is refused as other settings."""
  import gzip
  import shutil
  (tmp_path / "a" / "in").mkdir(parents=True)
  records = [{"id": f"r{i}", "text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(6)]
  ingest.write_jsonl(records + [{"id": "copy", "text": problems[0].code}],
                     tmp_path / "a" / "in" / "records.jsonl")
  from phi1.evals import benchmarks
  shutil.copy2(benchmarks.get("humaneval").default_path(), tmp_path / "a" / "HumanEval.jsonl.gz")

  def run(where, out="out"):
    return dc_cli.main(["--embedder", "none", "--input", str(tmp_path / where / "in"),
                        "--humaneval-path", str(tmp_path / where / "HumanEval.jsonl.gz"),
                        "--out", str(tmp_path / out), "--tasks", "1", "--workers", "1"])

  assert run("a") == 0
  report = (tmp_path / "out" / "report.json").read_bytes()
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  assert run("b") == 0 and (tmp_path / "out" / "report.json").read_bytes() == report
  lines = gzip.open(tmp_path / "b" / "HumanEval.jsonl.gz", "rt").read().splitlines()
  first = json.loads(lines[0])
  first["canonical_solution"] += "    pass\n"
  with gzip.open(tmp_path / "b" / "HumanEval.jsonl.gz", "wt") as f:
    f.write("\n".join([json.dumps(first)] + lines[1:]) + "\n")
  capsys.readouterr()
  assert run("b") == 2
  err = capsys.readouterr().err
  assert "other settings" in err and "problems_sha256" in err and "input_files" not in err


def test_defaults_are_the_papers():
  """§5 / Table 3: HumanEval only, pruned by embedding distance and AST tau (n-grams reported,
  not pruning), at the four taus; no problem is exempt from the AST measure."""
  config = dc.Config()
  assert dc.DEFAULT_BENCHMARKS == ("humaneval",)
  assert config.taus == (0.95, 0.9, 0.85, 0.8)
  assert config.remove_by == ("embedding", "ast") and config.combine == "union"
  assert config.embed_threshold is None  # calibrated: the paper does not give its threshold
  args = dc_cli.parse_args(["--input", "x", "--out", "y"])
  assert args.bench == "humaneval" and dc_cli.config_from_args(args) == config
  problems = dc.load_problems(["humaneval"])
  assert all(p.ast_unit is not None for p in problems)
  with pytest.raises(ValueError, match="remove_by"):
    dc.Config(remove_by=("ast", "bleu"))


def test_ngrams_are_reported_and_prune_only_when_asked(problems):
  he0 = next(p for p in problems if p.task_id == "HumanEval/0")
  records = [{"id": "copied-docstring", "text": "# notes\n" + he0.prose}]
  result = dc.decontaminate(records, problems, dc.Config(workers=1))
  report = decontaminate_report.build_report(result, problems, dc.Config(), None)
  assert report["measures"]["ngram"]["flagged_records"] == 1
  assert report["measures"]["ngram"]["prunes"] is False
  assert all(v["removed"] == 0 for v in report["taus"].values())
  config = dc.Config(remove_by=("ngram", "embedding", "ast"))
  report = decontaminate_report.build_report(result, problems, config, None)
  assert all(v["removed_ids"] == ["copied-docstring"] for v in report["taus"].values())


def test_embedding_threshold_is_calibrated_and_combined(problems):
  """'auto': the distance under which 1% of clean stdlib functions fall from their nearest
  problem; union removes a close pair at every tau, embedding_then_ast only where tau is reached."""
  embedder = embed.HashingEmbedder()
  reference = dc.reference_functions(200)
  assert len(reference) == 200 and all(r.lstrip().startswith(("def", "async def")) for r in reference)
  vectors = embedder.embed([p.code for p in problems])
  threshold = dc.calibrate_embed_threshold(embedder, vectors, reference, fpr=0.05)
  x = embedder.embed(reference)
  nearest = np.sqrt(np.maximum(2 - 2 * (x @ vectors.T).max(1), 0))
  assert np.mean(nearest <= threshold) == pytest.approx(0.05, abs=0.01)
  he0 = next(p for p in problems if p.task_id == "HumanEval/0")
  # Same text, different structure: close by the embedding, far by the AST.
  pairs = [{"id": "a", "ngram": 0, "embedding_distance": 0.01, "ast_match": None, "_problem": 0},
           {"id": "b", "ngram": 0, "embedding_distance": 0.01, "ast_match": 0.9, "_problem": 0},
           {"id": "c", "ngram": 0, "embedding_distance": 0.9, "ast_match": 0.97, "_problem": 0}]
  union = dc.Config()
  assert {p["id"] for p in dc.removed_at(pairs, 0.95, union, 0.1)} == {"a", "b", "c"}
  assert {p["id"] for p in dc.removed_at(pairs, 0.95, union, None)} == {"c"}  # embedding off
  two_stage = dc.Config(combine="embedding_then_ast")
  assert {p["id"] for p in dc.removed_at(pairs, 0.95, two_stage, 0.1)} == set()
  assert {p["id"] for p in dc.removed_at(pairs, 0.9, two_stage, 0.1)} == {"b"}
  result = dc.decontaminate([{"id": "v", "text": he0.code}], problems,
                            dc.Config(workers=1, calibration_size=200), embedder=embedder)
  assert result["embed_threshold"] == pytest.approx(dc.calibrate_embed_threshold(
      embedder, vectors, reference, fpr=dc.CALIBRATION_FPR))


def test_ngram_and_embedding_measures(tmp_path, problems):
  he0 = next(p for p in problems if p.task_id == "HumanEval/0")
  records = [
      {"id": "copied-docstring", "text": "# notes\n" + he0.prose, "source": "t"},
      {"id": "unrelated", "text": "x = 1\nprint('hello world')\n", "source": "t"},
      {"id": "verbatim-code", "text": he0.code, "source": "t"},
  ]
  config = dc.Config(workers=1, calibration_size=200)
  result = dc.decontaminate(records, problems, config, embedder=embed.HashingEmbedder())
  by_id = {}
  for p in result["pairs"]:
    if p["task_id"] == "HumanEval/0":
      by_id[p["id"]] = p
  assert by_id["copied-docstring"]["ngram"] > 0
  assert by_id["verbatim-code"]["embedding_distance"] == pytest.approx(0.0, abs=1e-3)
  assert by_id["verbatim-code"]["ast_match"] == 1.0
  assert "unrelated" not in by_id
  report = decontaminate_report.build_report(result, problems, config, embed.HashingEmbedder())
  assert report["measures"]["embedding"]["enabled"] is True
  assert report["measures"]["embedding"]["threshold_from"].startswith("calibrated")
  assert "verbatim-code" in report["taus"]["0.95"]["removed_ids"]


def test_bad_inputs(tmp_path, capsys):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "r.jsonl").write_text(json.dumps({"text": "x = 1"}) + "\n")
  assert dc_cli.main(["--embedder", "none", "--input", str(tmp_path / "in"), "--out",
                      str(tmp_path / "o")]) == 2
  assert "--id-field" in capsys.readouterr().err
  assert dc_cli.main(["--embedder", "none", "--input", str(tmp_path / "in"), "--out",
                      str(tmp_path / "o"), "--bench", "apps"]) == 2
  assert "unknown benchmark" in capsys.readouterr().err
  assert dc_cli.main(["--embedder", "none", "--input", str(tmp_path / "in"), "--out",
                      str(tmp_path / "o"), "--bench", "mbpp", "--mbpp-path",
                      str(tmp_path / "nope.jsonl"), "--assign-ids"]) == 2
  assert "--mbpp-path" in capsys.readouterr().err
  # An empty directory, or rows without text, is a failure naming the layouts read.
  (tmp_path / "empty").mkdir()
  assert dc_cli.main(["--embedder", "none", "--input", str(tmp_path / "empty"), "--out",
                      str(tmp_path / "e")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "holds no input files; expected" in err[0]
  (tmp_path / "blank").mkdir()
  (tmp_path / "blank" / "r.jsonl").write_text(json.dumps({"id": "1", "text": " "}) + "\n")
  assert dc_cli.main(["--embedder", "none", "--input", str(tmp_path / "blank"), "--out",
                      str(tmp_path / "b"), "--tasks", "1"]) == 2
  assert "yielded 0 records" in capsys.readouterr().err


def test_default_embedder_is_the_papers(tmp_path, capsys):
  """§5 prunes by CodeGen-Mono-350M embedding distance OR AST match: the default embedder is
  that model's directory, and without it the command says how to get it or to go AST-only."""
  assert dc_cli.parse_args(["--input", "x", "--out", "y"]).embedder == "codegen:codegen-350M-mono"
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "r.jsonl").write_text(json.dumps({"id": "1", "text": "x = 1"}) + "\n")
  assert dc_cli.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                      "--embedder", f"codegen:{tmp_path / 'missing'}"]) == 2
  assert "--embedder none" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_code_inside_prose_is_checked(problems):
  """Synthetic textbooks and Q/A records hold code in fenced blocks inside prose."""
  he = next(p for p in problems if p.task_id == "HumanEval/12")
  disguised = disguise(he.code, random.Random(1), insert=False)
  text = f"## Longest string\n\nWe walk the list once.\n\n```python\n{disguised}```\n\nDone.\n"
  assert ast_match.corpus_units(text) is None  # the whole record is not Python
  result = dc.decontaminate([{"id": "book", "text": text}], problems, dc.Config(workers=1))
  taus = {p["task_id"]: p["ast_match"] for p in result["pairs"]}
  assert taus.get("HumanEval/12") == 1.0
