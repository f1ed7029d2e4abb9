"""The filter pipeline's stages (other than dedup, see dedup.py) as datatrove steps.

Each stage only declares its steps (`steps`); data_gen/engine.py runs them. Sharded stages
(ingest, embed, score, the select filter) run one task per shard; the steps that need the whole
sample or corpus at once (annotate, classify, embed's merge, select's histogram) run one task. See pipeline.py
for the directory layout.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep

from data_gen import engine, shards
from phi1 import atomic
from phi1.data import rows
from data_gen.filtering import annotate as annotate_lib
from data_gen.filtering import classify as classify_lib
from data_gen.filtering import embed as embed_lib
from data_gen.filtering import ingest as ingest_lib
from data_gen.filtering import select as select_lib
from data_gen.filtering.shard_steps import (FinishStage, ReadShards, WriteShard, count,
                                            rank_shards, read_records, write_summary)


def _all_records(records_dir: str):
  def unreadable(path, n, error):
    raise ValueError(f"{path}: unreadable shard ({error}) after {n} records; rerun the stage "
                     "that wrote it")
  for path in rank_shards(records_dir, 0, 1):
    yield from read_records(path, unreadable)


def _embedder(config, given):
  if given is not None:
    return given
  from data_gen.filtering.embed import make_embedder
  return make_embedder(config.embedder)


class _OneTask(PipelineStep):
  """A stage that runs as one task and writes its own summary.json."""
  type = "data_gen"

  def __init__(self, config, workdir: str, records_dir: str, embedder, extra: dict):
    super().__init__()
    self.config, self.workdir, self.records_dir = config, pathlib.Path(workdir), records_dir
    self.embedder, self.extra = embedder, extra

  def out(self, stage: str) -> pathlib.Path:
    d = self.workdir / stage
    d.mkdir(parents=True, exist_ok=True)
    return d

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    write_summary(self.workdir / self.extra["stage"], {**self.extra, **self.work()})
    return iter(())

  def work(self) -> dict:
    raise NotImplementedError


class Annotate(_OneTask):
  name = "annotate"

  def work(self) -> dict:
    c = self.config
    out = self.out("annotate") / "labels.jsonl"
    if c.labels:
      labels = list(rows.iter_rows(c.labels))
      ingest_lib.write_jsonl(labels, out)
      return {"docs_in": len(labels), "docs_out": len(labels), "from": c.labels}
    chosen = set(annotate_lib.sample_ids((r["id"] for r in _all_records(self.records_dir)),
                                         c.sample_size, c.sample_seed))
    records = [r for r in _all_records(self.records_dir) if r["id"] in chosen]
    from phi1.llm.pricing import Prices
    scale = annotate_lib.SCALES[c.label_scale]
    labels, llm_stats = annotate_lib.annotate_sync(
        records, model=c.model, base_url=c.base_url, cache=str(self.out("annotate") / "cache.sqlite"),
        concurrency=c.concurrency, progress=c.progress, scale=c.label_scale,
        budget_usd=c.budget_usd,
        prices=Prices(c.price_in, c.price_out) if c.price_in is not None else None)
    ingest_lib.write_jsonl(labels, out)
    scored = [l["label"] for l in labels if l["label"] is not None]
    return {"docs_in": len(records), "docs_out": len(labels),
            "bytes_in": sum(len(r["text"].encode("utf-8", "replace")) for r in records),
            "unscored": len(labels) - len(scored), "label_scale": c.label_scale,
            "label_histogram": np.bincount(scored, minlength=scale.n_labels).tolist() if scored
            else [0] * scale.n_labels,
            "prompt_hash": scale.prompt_hash, "cost_usd": round(llm_stats["cost_usd"], 4),
            "llm": {k: llm_stats[k] for k in ("requests", "cache_hits", "retries",
                                              "prompt_tokens", "completion_tokens")}}


def _labels(workdir: pathlib.Path) -> list[dict]:
  return list(rows.iter_rows(str(workdir / "annotate" / "labels.jsonl")))


class EmbedSample(PipelineStep):
  """Embeds the labelled records among this task's shards (the embedder loaded once per task) into
  embed/_parts/part-NNNNN.npz; `EmbedMerge` puts the parts together."""
  type = "data_gen"
  name = "embed"

  def __init__(self, config, workdir: str, embedder):
    super().__init__()
    self.config, self.workdir, self.embedder = config, pathlib.Path(workdir), embedder

  def run(self, data, rank: int = 0, world_size: int = 1):
    labelled = {l["id"] for l in _labels(self.workdir)}
    docs = [d for d in data if d.id in labelled]
    embedder = _embedder(self.config, self.embedder)
    batch = self.config.embed_batch
    parts = [embedder.embed([d.text for d in docs[i:i + batch]])
             for i in range(0, len(docs), batch)]
    x_ND = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    self.stat_update("docs_out", value=len(docs))
    self.stat_update("bytes_embedded", value=sum(len(d.text.encode("utf-8", "replace"))
                                                 for d in docs))
    out = self.workdir / "embed" / "_parts"
    out.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(out / f"part-{rank:05d}.npz") as tmp, open(tmp, "wb") as f:
      # The embedder as the classifier will remember it: a checkpoint by its weights, not its path.
      np.savez(f, x=x_ND, ids=np.asarray([d.id for d in docs], dtype=str),
               embedder=np.asarray(embed_lib.spec_fingerprint(embedder.name)))
    return iter(())


class EmbedMerge(_OneTask):
  """The tasks' embeddings as one matrix, rows in the labels' order (so the classifier's split
  does not depend on the number of tasks): embed/x.npy and ids.json."""
  name = "embed merge"

  def work(self) -> dict:
    tasks = self.extra["tasks"]
    # Each part's arrays are read once (an NpzFile reads an array again at every access).
    parts = []
    for r in range(tasks):
      with np.load(self.workdir / "embed" / "_parts" / f"part-{r:05d}.npz") as z:
        parts.append({k: z[k] for k in ("x", "ids", "embedder")})
    row_of = {str(i): (k, j) for k, p in enumerate(parts) for j, i in enumerate(p["ids"])}
    ids = [l["id"] for l in _labels(self.workdir) if l["id"] in row_of]
    dim = parts[0]["x"].shape[1]
    x_ND = (np.stack([parts[row_of[i][0]]["x"][row_of[i][1]] for i in ids]) if ids
            else np.zeros((0, dim), np.float32))
    out = self.out("embed")
    np.save(out / "x.npy", x_ND)
    (out / "ids.json").write_text(json.dumps(ids))
    stats = engine.step_stats(self.workdir / "embed", "embed")
    return {"docs_in": len(ids), "docs_out": len(ids), "dim": int(dim),
            "embedder": str(parts[0]["embedder"]),
            "bytes_in": int(sum(b.get("bytes_embedded", 0) for b in stats.values())),
            "unreadable_shards": int(sum(b.get("unreadable_shards", 0) for b in stats.values()))}


class Classify(_OneTask):
  name = "classify"

  def work(self) -> dict:
    c = self.config
    embed_dir = self.workdir / "embed"
    x_ND = np.load(embed_dir / "x.npy")
    ids = json.loads((embed_dir / "ids.json").read_text())
    label_of = {l["id"]: l["label"] for l in _labels(self.workdir)}
    embed_summary = embed_dir / "summary.json"
    classifiers, report = classify_lib.train_and_evaluate(
        x_ND, [label_of.get(i) for i in ids], held_out=c.held_out, threshold=c.threshold,
        positive_label=c.positive_label, seed=c.seed, workers=1,
        embedder=json.loads(embed_summary.read_text()).get("embedder")
        if embed_summary.exists() else None)
    out = self.out("classify")
    for kind, classifier in classifiers.items():
      classifier.save(out / f"{kind}.pkl")
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    return {"docs_in": len(ids), "docs_out": len(ids),
            "metrics": {k: {**m["at_threshold"], "roc_auc": m.get("roc_auc")}
                        for k, m in report["models"].items()},
            "held_out": report["held_out"], "train": report["train"]}


class Score(PipelineStep):
  """Scores this task's records: the embedder and classifier are loaded once per task."""
  type = "data_gen"
  name = "score"

  def __init__(self, config, workdir: str, embedder):
    super().__init__()
    self.config, self.workdir, self.embedder = config, pathlib.Path(workdir), embedder

  def run(self, data, rank: int = 0, world_size: int = 1):
    from data_gen.filtering.ingest import batched
    c = self.config
    classifier = classify_lib.Classifier.load(self.workdir / "classify" / f"{c.classifier}.pkl")
    embedder = _embedder(c, self.embedder)
    now = embed_lib.spec_fingerprint(embedder.name)
    if classifier.embedder and classifier.embedder != now:
      raise ValueError(f"the classifier was trained on {classifier.embedder!r} embeddings but the "
                       f"embedder is now {now!r}; rerun the embed and classify stages")
    count_tokens = select_lib.token_counter(c.tokenizer, embedder)
    for batch in batched(data, c.embed_batch):
      t = time.time()
      x_ND = embedder.embed([d.text for d in batch])
      self.stat_update("seconds_embed", value=time.time() - t, unit="batch")
      t = time.time()
      scores = classifier.score(x_ND)
      self.stat_update("seconds_classify", value=time.time() - t, unit="batch")
      for doc, s in zip(batch, scores):
        doc.metadata["score"] = {"score": round(float(s), 5),
                                 "tokens": count_tokens(doc.text)}
        yield doc


def score_row(doc) -> dict:
  return {"id": doc.id, **doc.metadata["score"]}


@dataclasses.dataclass
class _ScoreSummary:
  classifier: str

  def __call__(self, stats: dict) -> dict:
    score = stats.get("score", {})
    seconds = lambda label: round(sum(b.get(label, 0) for b in score.values()), 3)
    return {"docs_in": count(stats, "score", "docs_in"), "docs_out": count(stats, "score", "docs_out"),
            "bytes_in": count(stats, "score", "bytes_in"), "classifier": self.classifier,
            "unreadable_shards": count(stats, "score", "unreadable_shards"),
            "worker_seconds_embed": seconds("seconds_embed"),  # summed over tasks
            "worker_seconds_classify": seconds("seconds_classify")}


@dataclasses.dataclass
class _IngestSummary:
  ids_dir: str   # the tasks' id hashes (ingest.IngestInputs): repeated ids are counted here

  def __call__(self, stats: dict) -> dict:
    names = ("skipped_binary", "skipped_huge", "skipped_unreadable", "skipped_empty",
             "skipped_bad_json", "skipped_bad_xml", "skipped_unanswered", "replaced_undecodable",
             "replaced_surrogates", "unparsable", "unreadable_shards", "rows_read")
    hashes = (np.load(p) for p in sorted(pathlib.Path(self.ids_dir).glob("ids-*.npy")))
    return {"docs_in": count(stats, "ingest", "docs_in"),
            "docs_out": count(stats, "ingest", "docs_out"),
            "bytes_in": count(stats, "ingest", "bytes_in"),
            "duplicate_ids": ingest_lib.count_repeats(hashes),
            **{n: count(stats, "ingest", n) for n in names}}


# ------------------------------------------------------------------------------------------ select
def _scores(workdir: pathlib.Path, rank: int, tasks: int):
  """Task `rank`'s score rows (id, score, tokens), streamed in record order."""
  for path in rank_shards(workdir / "score" / "scores", rank, tasks):
    yield from shards.iter_shard(path)


class SelectPlan(_OneTask):
  """The histogram pass, in bounded memory (select.py): one pass over the scores finds the
  threshold or the token budget's boundary; a second gives each task the boundary tokens of the
  tasks before it and gathers the report's statistics and examples."""
  name = "select plan"

  def work(self) -> dict:
    c = self.config
    tasks = self.extra["tasks"]
    if c.token_budget is not None:
      tokens_per_bin = np.zeros(select_lib.BINS, np.int64)
      for r in range(tasks):
        for row in _scores(self.workdir, r, tasks):
          tokens_per_bin[select_lib.score_bin(row["score"])] += row["tokens"]
      boundary, remaining = select_lib.budget_boundary(tokens_per_bin, c.token_budget)
      plan = {"boundary_bin": boundary, "boundary_tokens": remaining}
    else:
      plan = {"threshold": c.select_threshold if c.select_threshold is not None else c.threshold}
    report, offsets = select_lib.Report(), []
    for r in range(tasks):
      selector = select_lib.TaskSelector(plan, offsets[-1] if offsets else 0)
      for row in _scores(self.workdir, r, tasks):
        report.add(row["id"], row["score"], row["tokens"],
                   selector.keep(row["score"], row["tokens"]))
      offsets.append(selector.used)
    plan["offsets"] = [0, *offsets[:-1]]
    kept_bins = np.nonzero(report.kept_counts)[0]
    plan["effective_threshold"] = (
        plan["threshold"] if c.token_budget is None
        else (float(kept_bins[0]) / 100_000 if len(kept_bins) else None))
    plan["examples"] = sorted(report.example_ids())
    work = self.out("select") / "_work"
    work.mkdir(exist_ok=True)
    with open(work / "report_stats.npz", "wb") as f:
      report.save(f)
    (work / "plan.json").write_text(json.dumps(plan))
    return {"docs_in": int(report.n), "docs_out": int(report.kept_counts.sum()),
            "effective_threshold": plan["effective_threshold"]}


class SelectFilter(PipelineStep):
  """Keeps this task's records the plan keeps (checking they are the records that were scored),
  and saves the texts of the report's examples it holds."""
  type = "data_gen"
  name = "select filter"

  def __init__(self, workdir: str, records_dir: str):
    super().__init__()
    self.workdir, self.records_dir = pathlib.Path(workdir), records_dir

  def run(self, data, rank: int = 0, world_size: int = 1):
    work = self.workdir / "select" / "_work"
    plan = json.loads((work / "plan.json").read_text())
    selector = select_lib.TaskSelector(plan, plan["offsets"][rank])
    wanted = set(plan["examples"])
    scored = _scores(self.workdir, rank, world_size)
    texts = {}
    i = -1
    for i, doc in enumerate(data):
      row = next(scored, None)
      if row is None or row["id"] != doc.id:
        raise ValueError(f"task {rank}: record {i} is {doc.id!r} but the score there is for "
                         f"{row and row['id']!r}: the records changed after scoring; rerun the "
                         "score stage")
      if doc.id in wanted:
        texts[doc.id] = doc.text
      if selector.keep(row["score"], row["tokens"]):
        yield doc
    if next(scored, None) is not None:
      raise ValueError(f"task {rank}: {i + 1} records but more scores; rerun the score stage")
    atomic.write_json(work / f"examples-{rank:05d}.json", texts)


class SelectReport(_OneTask):
  name = "select report"

  def work(self) -> dict:
    c = self.config
    work = self.workdir / "select" / "_work"
    plan = json.loads((work / "plan.json").read_text())
    texts = {}
    for r in range(self.extra["tasks"]):
      texts.update(json.loads((work / f"examples-{r:05d}.json").read_text()))
    metrics_path = self.workdir / "classify" / "metrics.json"
    extra = {"classifier_metrics": json.loads(metrics_path.read_text())["models"]
             if metrics_path.exists() else None,
             "selected_by": "token_budget" if c.token_budget is not None else "threshold"}
    report = select_lib.write_report(self.out("select"), select_lib.Report.load(
        work / "report_stats.npz"), plan["effective_threshold"], texts, extra=extra)
    shards.write_manifest(str(self.workdir / "select" / "selected"), "selected")
    n_bytes = sum(json.loads(pathlib.Path(p + ".done").read_text())["bytes"]
                  for p in rank_shards(self.records_dir, 0, 1))
    return {"docs_in": report["records"], "docs_out": report["kept"], "bytes_in": n_bytes,
            "tokens_kept": report["tokens_kept"], "tokens_total": report["tokens_total"],
            "effective_threshold": plan["effective_threshold"]}


# ------------------------------------------------------------------------------------------- steps
def steps(stage: str, config, workdir: str, records_dir: str, tasks: int, embedder,
          extra: dict[str, Any]) -> list[engine.Step]:
  root = pathlib.Path(workdir)
  stage_dir = str(root / stage)
  one = dict(config=config, workdir=workdir, records_dir=records_dir, embedder=embedder,
             extra=extra)
  if stage == "ingest":
    out, ids_dir = str(root / "ingest" / "records"), str(root / "ingest" / "_work" / "ids")
    return [engine.Step("ingest", [
        ingest_lib.IngestInputs(config.input, max_bytes=config.max_bytes, limit=config.limit,
                                id_field=config.id_field, text_field=config.text_field,
                                assign_ids=config.assign_ids, ids_dir=ids_dir),
        WriteShard(out, config.format)], tasks),
            engine.Step("finish", [FinishStage(stage_dir, {out: "ingest"}, _IngestSummary(ids_dir),
                                               summary_extra=extra)], 1)]
  if stage == "annotate":
    # Not quiet: labelling reports its progress and cost as it goes (hours against the API).
    return [engine.Step("annotate", [Annotate(**one)], 1, quiet=False)]
  if stage == "embed":
    return [engine.Step("embed", [ReadShards(records_dir), EmbedSample(config, workdir, embedder)],
                        tasks, gpu=True),
            engine.Step("merge", [EmbedMerge(**{**one, "extra": {**extra, "tasks": tasks}})], 1)]
  if stage == "classify":
    return [engine.Step("classify", [Classify(**one)], 1)]
  if stage == "score":
    out = str(root / "score" / "scores")
    return [engine.Step("score", [ReadShards(records_dir), Score(config, workdir, embedder),
                                  WriteShard(out, "jsonl", row=score_row)], tasks, gpu=True),
            engine.Step("finish", [FinishStage(stage_dir, {out: "scores"},
                                               _ScoreSummary(config.classifier),
                                               summary_extra=extra)], 1)]
  if stage == "select":
    plan_extra = {**extra, "tasks": tasks}
    return [engine.Step("plan", [SelectPlan(**{**one, "extra": plan_extra})], 1),
            engine.Step("filter", [ReadShards(records_dir), SelectFilter(workdir, records_dir),
                                   WriteShard(str(root / "select" / "selected"), config.format)],
                        tasks),
            engine.Step("report", [SelectReport(**{**one, "extra": plan_extra})], 1)]
  raise ValueError(f"unknown stage {stage!r}")
