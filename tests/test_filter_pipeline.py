"""The filter pipeline end to end on the embedded default corpus (a bounded stdlib subset), with a
loopback OpenAI-compatible server standing in for GPT-4; resume, skip and bad-input behaviour."""

import dataclasses
import json

import pytest

from data_gen import engine, shards
from data_gen.filtering import annotate, cli, ingest, pipeline
from phi1.data import records as trainer_records
from data_gen.testing import FakeOpenAI
from test_embed import codegen_dir  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def server():
  with FakeOpenAI(responder=annotate.offline_judge) as s:
    yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "test-key")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  """A small real tokenizer (the CPU preset's is the demo's, trained on the whole stdlib)."""
  from phi1.tokenizer import train_sentencepiece
  texts = [r["text"] for _, r in zip(range(60), ingest.iter_records("stdlib", check_python=False))]
  path = tmp_path_factory.mktemp("tok") / "tok.model"
  train_sentencepiece(texts, path, vocab_size=512)
  return str(path)


def _args(workdir, server, tokenizer, *extra):
  return ["--preset", "cpu", "--input", "stdlib", "--limit", "240", "--workdir", str(workdir),
          "--base-url", server.base_url, "--sample-size", "200", "--n-estimators", "60",
          "--tokenizer", tokenizer, "--tasks", "2", "--workers", "2", *extra]


def test_end_to_end_then_resume(tmp_path, server, tokenizer, capsys):
  assert cli.main(_args(tmp_path, server, tokenizer)) == 0
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
  assert len(labels) == 200 and {l["label"] for l in labels} == {0, 1}  # the paper's yes/no
  assert all(l["scale"] == "binary" for l in labels)
  # Both embed tasks' parts, merged in the labels' order (the classifier's split must not depend on
  # the number of tasks).
  assert json.loads((tmp_path / "embed" / "ids.json").read_text()) == [l["id"] for l in labels]
  assert stages["embed"]["docs_in"] == 200 and len(list((tmp_path / "embed" / "_parts").iterdir())) == 2
  # Token counts are the tokenizer's, not words.
  from phi1.tokenizer import load_tokenizer
  tok = load_tokenizer(tokenizer)
  scores = {r["id"]: r["tokens"] for r in shards.read_records(str(tmp_path / "score" / "scores"))}
  first = shards.read_records(str(tmp_path / "dedup" / "records"))[0]
  assert scores[first["id"]] == len(tok.encode(first["text"]))
  metrics = json.loads((tmp_path / "classify" / "metrics.json").read_text())
  assert len(metrics["models"]["random_forest"]["sweep"]) == 19
  assert_metrics_are_the_held_out_ones(tmp_path, metrics, out["classifier_metrics"])
  report = json.loads((tmp_path / "select" / "report.json").read_text())
  selected = shards.read_records(str(tmp_path / "select" / "selected"))
  assert report["kept"] == len(selected) and report["classifier_metrics"]
  # The trainer reads the selected shards as it reads any data_gen output.
  stats = trainer_records.SourceStats(path="selected")
  assert len(list(trainer_records.read_documents(str(tmp_path / "select" / "selected"),
                                                 stats))) == len(selected)
  assert (tmp_path / "select" / "score_distribution.png").exists()
  dedup_summary = json.loads((tmp_path / "dedup" / "summary.json").read_text())
  assert {"docs_per_s", "mb_per_s", "near_duplicates", "exact_duplicates"} <= set(dedup_summary)

  # Same command: everything resumes. A new token budget reruns select only.
  assert cli.main(_args(tmp_path, server, tokenizer)) == 0
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert all(s["status"] == "resumed" for s in again.values())
  assert cli.main(_args(tmp_path, server, tokenizer, "--token-budget", "50000")) == 0
  budget = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert [n for n, s in budget.items() if s["status"] == "ran"] == ["select"]
  report = json.loads((tmp_path / "select" / "report.json").read_text())
  assert report["tokens_kept"] <= 50000 and report["selected_by"] == "token_budget"


def assert_metrics_are_the_held_out_ones(workdir, metrics, summary_metrics):
  """The reported precision/recall/F1 are the saved classifiers' on the held-out labels, each matched
  to its own embedding by id: recomputed here from the stage outputs with scikit-learn, they must
  equal what the pipeline reported (metrics measured on the training split, or on labels shifted
  against the embeddings, would differ)."""
  import numpy as np
  from sklearn.metrics import f1_score, precision_score, recall_score
  from data_gen.filtering import classify
  x_ND = np.load(workdir / "embed" / "x.npy")
  ids = json.loads((workdir / "embed" / "ids.json").read_text())
  label_of = {l["id"]: l["label"]
              for l in map(json.loads, (workdir / "annotate" / "labels.jsonl").read_text().splitlines())}
  defaults = pipeline.FilterConfig()  # the test runs with the default split and seed
  labels = [label_of[i] for i in ids]
  positive = metrics["positive_label"]
  _, test_idx = classify.split_held_out(labels, positive, defaults.held_out,
                                         defaults.seed)
  y_true = classify.binary_targets([labels[i] for i in test_idx], positive)
  assert metrics["held_out"] == len(test_idx) and 0 < y_true.sum() < len(y_true)
  for kind, reported in metrics["models"].items():
    model = classify.Classifier.load(workdir / "classify" / f"{kind}.pkl")
    predicted = (model.score(x_ND[test_idx]) >= model.threshold).astype(int)
    expected = {"precision": precision_score(y_true, predicted, zero_division=0),
                "recall": recall_score(y_true, predicted, zero_division=0),
                "f1": f1_score(y_true, predicted, zero_division=0)}
    for name, value in expected.items():
      assert reported["at_threshold"][name] == pytest.approx(value, abs=1e-4), (kind, name)
      assert summary_metrics[kind][name] == reported["at_threshold"][name]


def test_skip_dedup_and_reuse_labels(tmp_path, server, tokenizer, capsys):
  first = tmp_path / "a"
  assert cli.main(_args(first, server, tokenizer, "--skip", "dedup", "--limit", "120", "--sample-size",
                        "100")) == 0
  stages = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert stages["dedup"]["status"] == "skipped" and stages["score"]["docs_in"] == 120
  # Labels made elsewhere feed a run that skips annotation (no LLM calls).
  second = tmp_path / "b"
  assert cli.main(_args(second, server, tokenizer, "--limit", "120", "--labels",
                        str(first / "annotate" / "labels.jsonl"), "--base-url",
                        "http://127.0.0.1:9/v1")) == 0
  stages = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"]
  assert stages["annotate"]["docs_out"] == 100


def test_clear_errors(tmp_path, server, tokenizer, capsys):
  assert cli.main(_args(tmp_path, server, tokenizer, "--skip", "annotate", "--limit", "30")) == 2
  assert "labels" in capsys.readouterr().err
  assert cli.main(_args(tmp_path / "x", server, tokenizer, "--skip", "bogus")) == 2
  assert "unknown stages" in capsys.readouterr().err
  assert cli.main(["--preset", "cpu", "--input", str(tmp_path / "missing"), "--workdir",
                   str(tmp_path / "y"), "--tokenizer", tokenizer]) == 2
  assert "does not exist" in capsys.readouterr().err
  # The paper preset needs its CodeGen directory: said before anything runs (or is paid for).
  assert cli.main(["--input", "stdlib", "--workdir", str(tmp_path / "z")]) == 2
  assert "CodeGen-350M-mono" in capsys.readouterr().err and not (tmp_path / "z").exists()
  assert cli.main(["--preset", "cpu", "--tokenizer", "embedder", "--workdir",
                   str(tmp_path / "z")]) == 2
  assert "no tokenizer" in capsys.readouterr().err


def test_pipeline_with_phi1_embedder(tmp_path, server):
  """The paper's recipe end to end: a (tiny, untrained) phi1 model embeds for the classifier."""
  from data_gen.filtering.embed import Phi1Embedder
  embedder = Phi1Embedder.random("tiny", batch_size=16, buckets=(256,))
  config = pipeline.FilterConfig(input="stdlib", limit=60, workdir=str(tmp_path),
                                 base_url=server.base_url, sample_size=60, n_estimators=20,
                                 embed_batch=64, label_scale="additive", token_budget=None,
                                 embedder="hashing")  # the object below overrides it
  one_task = engine.EngineConfig(tasks=1)  # the model object stays in this process
  summaries = pipeline.Pipeline(config, embedder=embedder, log=lambda m: None,
                                engine_config=one_task).run()
  assert summaries["embed"]["dim"] == 128 and summaries["embed"]["embedder"] == "phi1-random:tiny"
  assert set(summaries["classify"]["metrics"]) == {"random_forest", "logistic_regression"}
  assert summaries["score"]["docs_out"] == summaries["dedup"]["docs_out"]
  # The classifier remembers its embedder: scoring with another one is refused.
  other = pipeline.Pipeline(dataclasses.replace(config, classifier="logistic_regression"),
                            log=lambda m: None, engine_config=one_task)
  assert other.fingerprint("dedup") == pipeline.Pipeline(
      config, embedder, engine_config=one_task).fingerprint("dedup")
  with pytest.raises(ValueError, match="trained on 'phi1-random:tiny'"):
    other.run(stages=("score",))


def test_a_half_finished_stage_refuses_other_settings(tmp_path):
  config = pipeline.FilterConfig(input="stdlib", limit=30, workdir=str(tmp_path))
  two = engine.EngineConfig(tasks=2, workers=1)
  pipeline.Pipeline(config, log=lambda m: None, engine_config=two).run(stages=("ingest",))
  # Killed after one of its two tasks (the summary comes last), then started with another limit.
  (tmp_path / "ingest" / "_engine" / "ingest" / "completions" / "00001").unlink()
  (tmp_path / "ingest" / "_engine" / "finish" / "completions" / "00000").unlink()
  (tmp_path / "ingest" / "summary.json").unlink()
  changed = pipeline.Pipeline(dataclasses.replace(config, limit=40), log=lambda m: None,
                              engine_config=two)
  with pytest.raises(engine.SettingsChanged, match=r"ingest.limit: 30 -> 40.*delete"):
    changed.run(stages=("ingest",))
  # The same settings finish it: only the missing task runs.
  summary = pipeline.Pipeline(config, log=lambda m: None, engine_config=two).run(
      stages=("ingest",))["ingest"]
  assert summary["status"] == "ran" and summary["docs_out"] == 30


def _py_dir(path, n, start=0):
  path.mkdir(exist_ok=True)
  for i in range(start, start + n):
    (path / f"m{i:03d}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i % 7}\n")


def test_changed_inputs_and_labels_recompute_what_depends_on_them(tmp_path):
  """A rerun after the labels file changed in place, or .py files were added, recomputes the
  stages that read them instead of saying "resumed"."""
  _py_dir(tmp_path / "src", 12)
  labels = tmp_path / "labels.jsonl"
  labels.write_text("".join(json.dumps({"id": f"src:m{i:03d}.py", "label": i % 2}) + "\n"
                            for i in range(12)))
  config = pipeline.FilterConfig(input=str(tmp_path / "src"), workdir=str(tmp_path / "w"),
                                 labels=str(labels), format="jsonl")
  stages = ("ingest", "dedup", "annotate")
  logs = []

  def run():
    return {k: (s["status"], s.get("docs_out")) for k, s in pipeline.Pipeline(
        config, log=logs.append, engine_config=engine.EngineConfig(tasks=1)).run(stages).items()}

  assert run() == {"ingest": ("ran", 12), "dedup": ("ran", 12), "annotate": ("ran", 12)}
  labels.write_text(labels.read_text().replace('"label": 0', '"label": 9'))  # same size, in place
  assert run() == {"ingest": ("resumed", 12), "dedup": ("resumed", 12), "annotate": ("ran", 12)}
  copied = [json.loads(l)["label"] for l in (tmp_path / "w" / "annotate" / "labels.jsonl").open()]
  assert copied.count(9) == 6
  assert any("annotate.labels" in line for line in logs)   # says what changed
  _py_dir(tmp_path / "src", 5, start=12)
  assert run() == {"ingest": ("ran", 17), "dedup": ("ran", 17), "annotate": ("ran", 12)}
  assert any("ingest.input" in line for line in logs)
  assert run() == {"ingest": ("resumed", 17), "dedup": ("resumed", 17), "annotate": ("resumed", 12)}


def test_a_moved_corpus_keeps_its_stages_and_files_rewritten_in_place_do_not(tmp_path):
  """Stages are keyed by what their files hold, not where they lie: the corpus and labels copied
  elsewhere with their times (`cp -p`) resume every stage; a renamed input file reruns ingest; an
  embedder checkpoint or tokenizer rewritten at the same path changes the key of the stages that
  read it, and a copy of it does not."""
  import shutil
  from flax import nnx
  from phi1 import checkpoint
  from phi1.model import Phi1, Phi1Config
  (tmp_path / "a").mkdir()
  _py_dir(tmp_path / "a" / "src", 12)
  labels = tmp_path / "a" / "labels.jsonl"
  labels.write_text("".join(json.dumps({"id": f"src:m{i:03d}.py", "label": i % 2}) + "\n"
                            for i in range(12)))
  config = pipeline.FilterConfig(input=str(tmp_path / "a" / "src"), workdir=str(tmp_path / "w"),
                                 labels=str(labels), format="jsonl")
  stages = ("ingest", "dedup", "annotate")

  def run(config):
    return {k: (s["status"], s.get("docs_out")) for k, s in pipeline.Pipeline(
        config, log=lambda m: None, engine_config=engine.EngineConfig(tasks=1)).run(stages).items()}

  assert run(config) == {"ingest": ("ran", 12), "dedup": ("ran", 12), "annotate": ("ran", 12)}
  shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2: contents and modification times
  moved = dataclasses.replace(config, input=str(tmp_path / "b" / "src"),
                              labels=str(tmp_path / "b" / "labels.jsonl"))
  assert run(moved) == {"ingest": ("resumed", 12), "dedup": ("resumed", 12),
                        "annotate": ("resumed", 12)}
  (tmp_path / "b" / "src" / "m011.py").rename(tmp_path / "b" / "src" / "m999.py")
  assert run(moved)["ingest"] == ("ran", 12)

  def key(stage, **changes):
    return pipeline.Pipeline(dataclasses.replace(config, **changes), log=lambda m: None).settings(
        stage)[f"{stage}.{ {'embed': 'embedder', 'score': 'tokenizer'}[stage]}"]

  export = tmp_path / "embedder"
  checkpoint.export_params(Phi1(Phi1Config.tiny(vocab_size=64, n_layers=1), rngs=nnx.Rngs(0)),
                           export)
  first = key("embed", embedder=f"phi1:{export}")
  shutil.copytree(export, tmp_path / "embedder_copy")
  assert key("embed", embedder=f"phi1:{tmp_path / 'embedder_copy'}") == first
  shutil.rmtree(export)
  checkpoint.export_params(Phi1(Phi1Config.tiny(vocab_size=64, n_layers=1), rngs=nnx.Rngs(1)),
                           export)  # retrained, same path
  assert key("embed", embedder=f"phi1:{export}") != first
  assert key("embed", embedder="hashing:256") == "hashing:256"

  tokenizer = tmp_path / "tok.model"
  tokenizer.write_bytes(b"one tokenizer")
  before = key("score", tokenizer=str(tokenizer))
  tokenizer.write_bytes(b"two tokenizer")
  assert key("score", tokenizer=str(tokenizer)) != before


def test_a_moved_embedder_checkpoint_still_scores_with_its_classifier(tmp_path, codegen_dir):
  """The classifier remembers its embedder by the weights, not the path: the checkpoint copied
  elsewhere scores with the classifier trained on its embeddings (a path-keyed check refused)."""
  import shutil
  _py_dir(tmp_path / "src", 40)
  labels = tmp_path / "labels.jsonl"
  labels.write_text("".join(json.dumps({"id": f"src:m{i:03d}.py", "label": i % 2}) + "\n"
                            for i in range(40)))
  config = pipeline.FilterConfig(input=str(tmp_path / "src"), workdir=str(tmp_path / "w"),
                                 labels=str(labels), embedder=f"codegen:{codegen_dir[0]}",
                                 n_estimators=5, token_budget=None, format="jsonl")
  stages = ("ingest", "dedup", "annotate", "embed", "classify", "score")

  def run(config):
    return {k: s["status"] for k, s in pipeline.Pipeline(
        config, log=lambda m: None, engine_config=engine.EngineConfig(tasks=1)).run(stages).items()}

  assert set(run(config).values()) == {"ran"}
  shutil.copytree(codegen_dir[0], tmp_path / "codegen_copy")
  moved = dataclasses.replace(config, embedder=f"codegen:{tmp_path / 'codegen_copy'}",
                              classifier="logistic_regression")  # score runs again
  assert run(moved) == {**dict.fromkeys(stages[:-1], "resumed"), "score": "ran"}


def test_record_files_in_a_directory_quietly(tmp_path, capsys):
  """A directory of .jsonl records (repeated ids among them, one row's bytes not UTF-8) runs
  through ingest and dedup with one console line per stage; datatrove's lines go to the logs."""
  src = tmp_path / "records"
  src.mkdir()
  for f in range(2):
    with open(src / f"part-{f}.jsonl", "wb") as out:
      for i in range(30):
        rid = f"{f}-{i}" if i >= 3 else f"dup-{i}"   # 3 ids appear in both files
        out.write(json.dumps({"id": rid, "text": f"value_{f}_{i} = compute({i}, {f})\n"}).encode()
                  + b"\n")
      out.write(b'{"id": "latin-%d", "text": "caf\xe9 = 1"}\n' % f)
  assert cli.main(["--preset", "cpu", "--input", str(src), "--workdir", str(tmp_path / "w"),
                   "--skip", "annotate,embed,classify,score,select", "--tasks", "2",
                   "--workers", "1"]) == 0
  captured = capsys.readouterr()
  stages = json.loads(captured.out.strip().splitlines()[-1])["stages"]
  assert stages["ingest"]["docs_out"] == 62 and stages["dedup"]["docs_in"] == 62
  summary = json.loads((tmp_path / "w" / "ingest" / "summary.json").read_text())
  assert summary["duplicate_ids"] == 3 and summary["replaced_undecodable"] == 2
  assert summary["peak_memory_mb"]["ingest"] > 10
  assert len(captured.err.strip().splitlines()) <= 7, captured.err   # one line per stage
  assert "3 duplicate ids" in captured.err
  assert list((tmp_path / "w" / "dedup" / "_engine" / "logs").glob("*.log"))


def test_input_without_records_is_an_error(tmp_path, capsys):
  src = tmp_path / "blank.jsonl"
  src.write_text("".join(json.dumps({"id": str(i), "text": "  \n"}) + "\n" for i in range(3)))
  assert cli.main(["--preset", "cpu", "--input", str(src), "--workdir", str(tmp_path / "w"),
                   "--tasks", "1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "yielded 0 records (skipped_empty 3); expected" in err[-1] and "Posts.xml" in err[-1]


def test_embed_merge_reads_each_part_once(tmp_path):
  """The merge puts 1,000 labelled embeddings from 4 task parts in label order without holding
  a part's array per record (it once peaked at 1.1 GB here)."""
  import tracemalloc
  import numpy as np
  from data_gen.filtering import stages
  rng = np.random.default_rng(0)
  (tmp_path / "embed" / "_parts").mkdir(parents=True)
  ids = [f"r{i}" for i in range(1000)]
  x_ND = rng.standard_normal((1000, 256)).astype(np.float32)
  for r in range(4):
    np.savez(tmp_path / "embed" / "_parts" / f"part-{r:05d}.npz", x=x_ND[r::4],
             ids=np.asarray(ids[r::4]), embedder=np.asarray("hashing:256"))
  (tmp_path / "annotate").mkdir()
  labels = list(reversed(ids))
  (tmp_path / "annotate" / "labels.jsonl").write_text(
      "".join(json.dumps({"id": i, "label": 1}) + "\n" for i in labels))
  (tmp_path / "embed" / "_engine" / "embed" / "stats").mkdir(parents=True)
  merge = stages.EmbedMerge(pipeline.FilterConfig(), str(tmp_path), "", None,
                            {"stage": "embed", "tasks": 4})
  tracemalloc.start()
  summary = merge.work()
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert summary["docs_out"] == 1000 and peak < 40e6, peak
  merged = np.load(tmp_path / "embed" / "x.npy")
  np.testing.assert_array_equal(merged, x_ND[[int(i[1:]) for i in labels]])
