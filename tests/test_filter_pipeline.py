"""The filter pipeline end to end on the embedded default corpus (a bounded stdlib subset), with a
loopback OpenAI-compatible server standing in for GPT-4; resume, skip and bad-input behaviour."""

import dataclasses
import json

import pytest

from data_gen.filtering import annotate, cli, pipeline
from data_gen.testing import FakeOpenAI


@pytest.fixture(scope="module")
def server():
  with FakeOpenAI(responder=annotate.offline_judge) as s:
    yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def _args(workdir, server, *extra):
  return ["--input", "stdlib", "--limit", "240", "--workdir", str(workdir), "--base-url",
          server.base_url, "--sample-size", "200", "--n-estimators", "60", "--workers", "2",
          *extra]


def test_end_to_end_then_resume(tmp_path, server, capsys):
  assert cli.main(_args(tmp_path, server)) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  stages = out["stages"]
  assert list(stages) == list(pipeline.STAGES)
  assert all(s["status"] == "ran" and s["seconds"] > 0 for s in stages.values())
  assert stages["ingest"]["docs_out"] == 240
  assert stages["dedup"]["docs_out"] <= 240 and stages["annotate"]["docs_out"] == 200
  assert stages["score"]["docs_in"] == stages["dedup"]["docs_out"]
  for kind in ("random_forest", "logistic_regression"):
    m = out["classifier_metrics"][kind]
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and 0 <= m["f1"] <= 1
    assert m["roc_auc"] > 0.6, (kind, m)  # the judge's signal is learnable from embeddings
  labels = [json.loads(l) for l in (tmp_path / "annotate" / "labels.jsonl").read_text().splitlines()]
  assert len(labels) == 200 and all(0 <= l["label"] <= 5 for l in labels)
  metrics = json.loads((tmp_path / "classify" / "metrics.json").read_text())
  assert len(metrics["models"]["random_forest"]["sweep"]) == 19
  report = json.loads((tmp_path / "select" / "report.json").read_text())
  selected = (tmp_path / "select" / "selected.jsonl").read_text().splitlines()
  assert report["kept"] == len(selected) and report["classifier_metrics"]
  assert (tmp_path / "select" / "score_distribution.png").exists()
  dedup_summary = json.loads((tmp_path / "dedup" / "summary.json").read_text())
  assert {"docs_per_s", "mb_per_s", "clusters", "exact_duplicates"} <= set(dedup_summary)

  # Same command: everything resumes. A new token budget reruns select only.
  assert cli.main(_args(tmp_path, server)) == 0
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert all(s["status"] == "resumed" for s in again.values())
  assert cli.main(_args(tmp_path, server, "--token-budget", "50000")) == 0
  budget = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert [n for n, s in budget.items() if s["status"] == "ran"] == ["select"]
  report = json.loads((tmp_path / "select" / "report.json").read_text())
  assert report["tokens_kept"] <= 50000 and report["selected_by"] == "token_budget"


def test_skip_dedup_and_reuse_labels(tmp_path, server, capsys):
  first = tmp_path / "a"
  assert cli.main(_args(first, server, "--skip", "dedup", "--limit", "120", "--sample-size",
                        "100")) == 0
  stages = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert stages["dedup"]["status"] == "skipped" and stages["score"]["docs_in"] == 120
  # Labels made elsewhere feed a run that skips annotation (no LLM calls).
  second = tmp_path / "b"
  assert cli.main(_args(second, server, "--limit", "120", "--labels",
                        str(first / "annotate" / "labels.jsonl"), "--base-url",
                        "http://127.0.0.1:9/v1")) == 0
  stages = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert stages["annotate"]["docs_out"] == 100


def test_clear_errors(tmp_path, server, capsys):
  assert cli.main(_args(tmp_path, server, "--skip", "annotate", "--limit", "30")) == 2
  assert "labels" in capsys.readouterr().err
  assert cli.main(_args(tmp_path / "x", server, "--skip", "bogus")) == 2
  assert "unknown stages" in capsys.readouterr().err
  assert cli.main(["--input", str(tmp_path / "missing"), "--workdir", str(tmp_path / "y")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_pipeline_with_phi1_embedder(tmp_path, server):
  """The paper's recipe end to end: a (tiny, untrained) phi1 model embeds for the classifier."""
  from data_gen.filtering.embed import Phi1Embedder
  embedder = Phi1Embedder.random("tiny", batch_size=16, buckets=(256,))
  config = pipeline.FilterConfig(input="stdlib", limit=60, workdir=str(tmp_path), workers=1,
                                 base_url=server.base_url, sample_size=60, n_estimators=20,
                                 embed_batch=64)
  summaries = pipeline.Pipeline(config, embedder=embedder, log=lambda m: None).run()
  assert summaries["embed"]["dim"] == 128 and summaries["embed"]["embedder"] == "phi1-random:tiny"
  assert set(summaries["classify"]["metrics"]) == {"random_forest", "logistic_regression"}
  assert summaries["score"]["docs_out"] == summaries["dedup"]["docs_out"]
  # The classifier remembers its embedder: scoring with another one is refused.
  other = pipeline.Pipeline(dataclasses.replace(config, classifier="logistic_regression"),
                            log=lambda m: None)
  assert other.fingerprint("dedup") == pipeline.Pipeline(config, embedder).fingerprint("dedup")
  with pytest.raises(ValueError, match="trained on 'phi1-random:tiny'"):
    other.run(stages=("score",))


def test_ingest_and_score_killed_midway_resume_from_their_last_mark(tmp_path, server, monkeypatch):
  """35M files take hours per stage: a crash must cost at most RESUME_EVERY inputs of work."""
  from data_gen.filtering import ingest
  monkeypatch.setattr(ingest, "RESUME_EVERY", 25)
  config = pipeline.FilterConfig(input="stdlib", limit=120, workdir=str(tmp_path / "a"), workers=1,
                                 base_url=server.base_url, sample_size=100, n_estimators=20,
                                 embed_batch=10)
  clean = pipeline.Pipeline(config, log=lambda m: None)
  clean.run()

  def read(workdir):
    return [(workdir / stage / name).read_text()
            for stage, name in (("ingest", "records.jsonl"), ("score", "scores.jsonl"))]

  crashed = dataclasses.replace(config, workdir=str(tmp_path / "b"))
  finished = ingest._Finisher.__call__
  calls = []

  def crash_after(limit):
    def finish(self, item):
      calls.append(1)
      if len(calls) > limit:
        raise KeyboardInterrupt("killed")
      return finished(self, item)
    return finish

  monkeypatch.setattr(ingest._Finisher, "__call__", crash_after(70))
  with pytest.raises(KeyboardInterrupt):
    pipeline.Pipeline(crashed, log=lambda m: None).run(stages=("ingest",))
  monkeypatch.setattr(ingest._Finisher, "__call__", crash_after(10**9))
  calls.clear()
  summary = pipeline.Pipeline(crashed, log=lambda m: None).run(stages=("ingest",))["ingest"]
  assert 50 <= summary["resumed_at_input"] <= 70  # marks every 25 inputs; killed at the 71st
  assert len(calls) == summary["docs_in"] - summary["resumed_at_input"]

  scorer_call = pipeline._BatchScorer.__call__
  batches = []

  def score_then_crash(self, texts):
    batches.append(len(texts))
    if len(batches) == 8:
      raise KeyboardInterrupt("killed")
    return scorer_call(self, texts)

  monkeypatch.setattr(pipeline._BatchScorer, "__call__", score_then_crash)
  with pytest.raises(KeyboardInterrupt):
    pipeline.Pipeline(crashed, log=lambda m: None).run()
  monkeypatch.setattr(pipeline._BatchScorer, "__call__", scorer_call)
  summaries = pipeline.Pipeline(crashed, log=lambda m: None).run()
  # Batches of 10 records, a mark once 25 more are done: at 30 and 60; killed in the 8th batch.
  assert summaries["score"]["resumed_at_record"] == 60
  assert read(tmp_path / "b") == read(tmp_path / "a")
  # Select pairs scores with records by position and checks the ids: stale scores are refused.
  b = tmp_path / "b"
  (b / "select" / "summary.json").unlink()
  scores = (b / "score" / "scores.jsonl").read_text().splitlines()
  (b / "score" / "scores.jsonl").write_text("\n".join(scores[:-1]) + "\n")
  with pytest.raises(ValueError, match="more records than .* scores: rerun the score stage"):
    pipeline.Pipeline(crashed, log=lambda m: None).run(stages=("select",))
  (b / "score" / "scores.jsonl").write_text("\n".join(scores[1:] + scores[:1]) + "\n")
  with pytest.raises(ValueError, match="row 0 is .* but the record there is"):
    pipeline.Pipeline(crashed, log=lambda m: None).run(stages=("select",))
