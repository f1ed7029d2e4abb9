"""Content fingerprints (phi1/fingerprint.py): content, not paths, decides; and what reads them
(a sweep's saved eval) recomputes when the weights changed."""

import json
import pathlib
import types

from phi1 import fingerprint


def _export(path, weights: bytes):
  (path / "params").mkdir(parents=True, exist_ok=True)
  (path / "phi1_config.json").write_text('{"d_model": 64}')
  (path / "params" / "d").write_bytes(weights)
  return path


def test_content_decides_not_the_path_and_results_beside_weights_do_not_count(tmp_path):
  a, b = _export(tmp_path / "a", b"w" * 10), _export(tmp_path / "b", b"w" * 10)
  assert fingerprint.of_weights(str(a)) == fingerprint.of_weights(str(b))
  (a / "eval_out.json").write_text("{}")  # an eval's output beside the weights
  assert fingerprint.of_weights(str(a)) == fingerprint.of_weights(str(b))
  _export(a, b"v" * 10)
  assert fingerprint.of_weights(str(a)) != fingerprint.of_weights(str(b))
  # A workdir stands for its export; a step for its checkpoint directory.
  assert fingerprint.of_weights(str(tmp_path / "nowhere")) == fingerprint.MISSING
  (tmp_path / "run" / "export").mkdir(parents=True)
  _export(tmp_path / "run" / "export", b"v" * 10)
  assert fingerprint.of_weights(str(tmp_path / "run")) == fingerprint.of_weights(str(a))


def test_a_large_file_changes_in_any_window_and_in_size(tmp_path):
  path = tmp_path / "big.bin"
  data = bytearray(b"x" * (9 << 20))
  path.write_bytes(data)
  seen = {fingerprint.of_file(str(path))}
  for offset in (0, len(data) // 2 - 10, len(data) - 1):
    changed = bytearray(data)
    changed[offset] = ord("y")
    path.write_bytes(changed)
    seen.add(fingerprint.of_file(str(path)))
  path.write_bytes(data + b"x")
  seen.add(fingerprint.of_file(str(path)))
  assert len(seen) == 5


def test_a_data_gen_directory_is_its_manifest_and_a_py_folder_its_py_files(tmp_path):
  shards = tmp_path / "textbooks"
  shards.mkdir()
  manifest = {"kind": "textbooks", "shards": [
      {"file": "shard-00000.jsonl.gz", "records": 30, "bytes": 100, "sha256": "aa"}]}
  (shards / "manifest.json").write_text(json.dumps(manifest))
  before = fingerprint.of_data_source(str(shards))
  (shards / "notes.txt").write_text("not data")
  assert fingerprint.of_data_source(str(shards)) == before
  manifest["shards"].append({"file": "shard-00001.jsonl.gz", "records": 50, "bytes": 160,
                             "sha256": "bb"})
  (shards / "manifest.json").write_text(json.dumps(manifest))  # topped up 30 -> 80
  assert fingerprint.of_data_source(str(shards)) != before

  code = tmp_path / "code"
  code.mkdir()
  (code / "a.py").write_text("x = 1\n")
  before = fingerprint.of_data_source(str(code))
  (code / "README").write_text("ignored")
  assert fingerprint.of_data_source(str(code)) == before
  (code / "b.py").write_text("y = 2\n")
  assert fingerprint.of_data_source(str(code)) != before
  data = {"sources": [{"path": str(shards), "name": "textbooks"}, str(code)],
          "eval_sources": [], "tokenizer": ""}
  assert list(fingerprint.of_data(data)) == [f"data source 'textbooks' ({shards})",
                                             f"data source 'source1' ({code})"]


def test_a_sweep_evaluates_again_when_its_saved_eval_scored_other_weights(tmp_path, monkeypatch):
  from experiments import sweep
  workdir = tmp_path / "run"
  export = _export(workdir / "export", b"first")
  calls = []

  def evaluate(bench, *, checkpoint, out, **options):  # phi1.evals.cli.evaluate, as it writes
    calls.append(checkpoint)
    summary = {"pass@1": 0.1 * len(calls), "protocol": {"generator": {
        "kind": "checkpoint", "path": checkpoint, "weights": fingerprint.of_weights(checkpoint)}}}
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(out) / "summary.json").write_text(json.dumps(summary))
    return summary

  from phi1.evals import cli as eval_cli
  monkeypatch.setattr(eval_cli, "evaluate", evaluate)
  run = types.SimpleNamespace(workdir=workdir, config=types.SimpleNamespace(init_from=""))
  evaluate = lambda: sweep.evaluate(run, "humaneval", limit=2, max_new_tokens=8)["pass@1"]
  assert evaluate() == 0.1 and evaluate() == 0.1 and len(calls) == 1  # the same weights: reused
  _export(export, b"retrained")  # --restart trained new weights into the same export
  assert evaluate() == 0.2 and len(calls) == 2
  assert list(workdir.glob("eval_humaneval.stale-*/summary.json"))


def test_an_eval_summary_is_current_while_its_weights_are(tmp_path):
  export = _export(tmp_path / "export", b"first")
  made = {"kind": "checkpoint", "path": str(export), "weights": fingerprint.of_weights(str(export))}
  direct = {"protocol": {"generator": made}}
  # `phi1 eval --samples generations.jsonl` of saved checkpoint generations: its settings say.
  replayed = {"protocol": {"generator": {"kind": "generations", "settings": {
      "kind": "checkpoint", "checkpoint": str(export), "step": None, "weights": made["weights"]}}}}
  assert fingerprint.eval_staleness(direct) == fingerprint.eval_staleness(replayed) == ""
  assert fingerprint.eval_staleness({"protocol": {"generator": {"kind": "samples"}}}).startswith(
      "unverified")
  _export(export, b"second")
  assert fingerprint.eval_staleness(direct).startswith("stale")
  assert fingerprint.eval_staleness(replayed).startswith("stale")
