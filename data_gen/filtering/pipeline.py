"""The filter pipeline: ingest -> dedup -> annotate -> embed -> classify -> score -> select.

Each stage writes its outputs and a `summary.json` under `workdir/<stage>/`. A stage is resumed
(not rerun) when its summary exists and its fingerprint, a hash of its settings and of every
upstream stage's fingerprint, is unchanged; change a setting and that stage and everything after it
run again. A stage named in `skip` does not run: its previous outputs are used if present (for
`dedup`, the ingested records pass straight through). `labels=FILE` (`--labels`) makes the annotate
stage copy labels made elsewhere instead of calling the LLM.

The stages that take hours on The Stack's 35M files also resume *inside* a stage after a kill:
ingest and score mark their progress every `ingest.RESUME_EVERY` inputs (`*.partial` and
`*.progress.json` beside the output), dedup keeps its signatures per chunk, and annotation's
answers are in the LLM cache.

  workdir/ingest/records.jsonl       every record (id, text, source, kind, python_ok, meta)
  workdir/dedup/records.jsonl        kept records; clusters.jsonl: the duplicate clusters;
                                     signatures/: per-chunk MinHash band hashes (resume)
  workdir/annotate/labels.jsonl      LLM labels of the sample (id, label, rationale, model, ...)
  workdir/embed/x.npy, ids.json      embeddings of the labelled sample
  workdir/classify/<kind>.pkl        trained classifiers; metrics.json: held-out P/R/F1 + sweep
  workdir/score/scores.jsonl         every record's score and token count (embedded in batches)
  workdir/select/selected.jsonl      the kept records; report.json + score_distribution.png

Every summary has the stage's counts, seconds, docs/s and MB/s.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Callable

import numpy as np

from data_gen.filtering import annotate as annotate_lib
from data_gen.filtering import classify as classify_lib
from data_gen.filtering import dedup as dedup_lib
from data_gen.filtering import ingest as ingest_lib
from data_gen.filtering import select as select_lib

STAGES = ("ingest", "dedup", "annotate", "embed", "classify", "score", "select")


@dataclasses.dataclass
class FilterConfig:
  input: str = "default"
  workdir: str = "filter_out"
  limit: int | None = None
  max_bytes: int = ingest_lib.DEFAULT_MAX_BYTES
  id_field: str = "id"
  assign_ids: bool = False
  workers: int = max(1, os.cpu_count() or 1)
  # dedup (datatrove's defaults)
  shingle: int = 5
  bands: int = 14
  rows: int = 8
  # annotate
  sample_size: int = 2000          # the paper labelled ~100K
  sample_seed: int = 0
  model: str = "gpt-4"
  base_url: str | None = None
  concurrency: int = 16
  labels: str | None = None        # labels.jsonl made elsewhere (with annotate skipped)
  # embed / classify / score
  embedder: str = "hashing"
  embed_batch: int = 256
  classifier: str = "random_forest"   # which trained classifier scores the corpus
  n_estimators: int = 200
  held_out: float = 0.2
  threshold: float = 0.5
  positive_label: int = 3
  seed: int = 0
  # select: one of these; neither = the classifier threshold
  select_threshold: float | None = None
  token_budget: int | None = None
  skip: tuple[str, ...] = ()
  progress: bool = False

  def __post_init__(self):
    unknown = set(self.skip) - set(STAGES)
    if unknown:
      raise ValueError(f"unknown stages to skip {sorted(unknown)}; stages are {STAGES}")
    if self.classifier not in classify_lib.KINDS:
      raise ValueError(f"classifier must be one of {classify_lib.KINDS}, got {self.classifier!r}")
    if self.select_threshold is not None and self.token_budget is not None:
      raise ValueError("select by a threshold or a token budget, not both")


# Which settings each stage's output depends on (its fingerprint also covers its upstream).
_STAGE_KEYS = {
    "ingest": ("input", "limit", "max_bytes", "id_field", "assign_ids"),
    "dedup": ("shingle", "bands", "rows"),
    "annotate": ("sample_size", "sample_seed", "model", "labels"),
    "embed": ("embedder",),
    "classify": ("n_estimators", "held_out", "threshold", "positive_label", "seed"),
    "score": ("classifier",),
    "select": ("select_threshold", "token_budget"),
}


class Pipeline:
  def __init__(self, config: FilterConfig, embedder=None, log: Callable[[str], None] | None = None):
    self.config = config
    self.workdir = pathlib.Path(config.workdir)
    self._embedder = embedder   # an Embedder object overrides config.embedder (notebooks, tests)
    self._embedder_given = embedder.name if embedder is not None else None
    self.log = log or (lambda msg: print(msg, file=sys.stderr))
    self.summaries: dict[str, dict] = {}

  # ------------------------------------------------------------------------------------ plumbing
  def dir(self, stage: str) -> pathlib.Path:
    d = self.workdir / stage
    d.mkdir(parents=True, exist_ok=True)
    return d

  def fingerprint(self, stage: str) -> str:
    upto = STAGES[:STAGES.index(stage) + 1]
    settings = {s: {k: getattr(self.config, k) for k in _STAGE_KEYS[s]} for s in upto}
    settings["skipped"] = sorted(set(self.config.skip) & set(upto))
    if self._embedder_given is not None and "embed" in upto:
      settings["embedder_object"] = self._embedder_given
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

  @property
  def embedder(self):
    if self._embedder is None:
      from data_gen.filtering.embed import make_embedder
      self._embedder = make_embedder(self.config.embedder)
    return self._embedder

  def records_file(self) -> pathlib.Path:
    stage = "ingest" if "dedup" in self.config.skip else "dedup"
    path = self.workdir / stage / "records.jsonl"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist: run the {stage} stage first")
    return path

  def run(self, stages=STAGES) -> dict[str, dict]:
    for stage in stages:
      summary_path = self.workdir / stage / "summary.json"
      if stage in self.config.skip:
        self.summaries[stage] = {"stage": stage, "status": "skipped"}
        self.log(f"[{stage}] skipped")
        continue
      fingerprint = self.fingerprint(stage)
      if summary_path.exists():
        previous = json.loads(summary_path.read_text())
        if previous.get("fingerprint") == fingerprint:
          previous["status"] = "resumed"
          self.summaries[stage] = previous
          self.log(f"[{stage}] resumed from {summary_path}")
          continue
      t0 = time.time()
      summary = getattr(self, f"_{stage}")()
      seconds = time.time() - t0
      docs = summary.get("docs_in", 0)
      summary = {"stage": stage, "status": "ran", "fingerprint": fingerprint,
                 "seconds": round(seconds, 3), **summary,
                 "docs_per_s": round(docs / max(seconds, 1e-9), 1),
                 "mb_per_s": round(summary.get("bytes_in", 0) / 1e6 / max(seconds, 1e-9), 3)}
      summary_path.parent.mkdir(parents=True, exist_ok=True)
      summary_path.write_text(json.dumps(summary, indent=1))
      self.summaries[stage] = summary
      self.log(f"[{stage}] {format_summary(summary)}")
    return self.summaries

  # -------------------------------------------------------------------------------------- stages
  def _ingest(self) -> dict:
    c = self.config
    writer = ingest_lib.ResumableJsonlWriter(self.dir("ingest") / "records.jsonl",
                                             key=self.fingerprint("ingest"))
    stats = ingest_lib.IngestStats(**(writer.state or {}))
    records = ingest_lib.iter_records(c.input, max_bytes=c.max_bytes, workers=c.workers,
                                      limit=c.limit, id_field=c.id_field,
                                      assign_ids=c.assign_ids, stats=stats, skip=writer.resumed)
    try:
      for r in _progress(records, c.progress, "ingest"):
        writer.write(r)
        writer.consumed(stats.seen, stats.as_dict())
      n = writer.finish()
    finally:
      writer.close()
    return {"docs_in": stats.seen, "docs_out": n, "bytes_in": stats.bytes,
            "resumed_at_input": writer.resumed, **stats.as_dict()}

  def _dedup(self) -> dict:
    c = self.config
    source = self.workdir / "ingest" / "records.jsonl"
    if not source.exists():
      raise FileNotFoundError(f"{source} does not exist: run the ingest stage first")
    bar = None
    if c.progress:
      from tqdm import tqdm
      bar = tqdm(desc="dedup (signing)", unit="doc", file=sys.stderr)
    try:
      return dedup_lib.dedup_jsonl(
          source, self.dir("dedup"),
          dedup_lib.DedupConfig(ngram=c.shingle, bands=c.bands, rows=c.rows, workers=c.workers),
          progress=bar.update if bar is not None else None)
    finally:
      if bar is not None:
        bar.close()

  def _annotate(self) -> dict:
    c = self.config
    out = self.dir("annotate") / "labels.jsonl"
    if c.labels:
      labels = list(ingest_lib.read_jsonl(c.labels))
      ingest_lib.write_jsonl(labels, out)
      return {"docs_in": len(labels), "docs_out": len(labels), "from": c.labels}
    ids = (r["id"] for r in ingest_lib.read_jsonl(self.records_file()))
    chosen = set(annotate_lib.sample_ids(ids, c.sample_size, c.sample_seed))
    records = [r for r in ingest_lib.read_jsonl(self.records_file()) if r["id"] in chosen]
    labels, llm_stats = annotate_lib.annotate_sync(
        records, model=c.model, base_url=c.base_url, cache=str(self.dir("annotate") / "cache.sqlite"),
        concurrency=c.concurrency, progress=c.progress)
    ingest_lib.write_jsonl(labels, out)
    scored = [l["label"] for l in labels if l["label"] is not None]
    return {"docs_in": len(records), "docs_out": len(labels),
            "bytes_in": sum(len(r["text"].encode("utf-8", "replace")) for r in records),
            "unscored": len(labels) - len(scored),
            "label_histogram": np.bincount(scored, minlength=6).tolist() if scored else [0] * 6,
            "prompt_hash": annotate_lib.PROMPT_HASH, "cost_usd": round(llm_stats["cost_usd"], 4),
            "llm": {k: llm_stats[k] for k in ("requests", "cache_hits", "retries",
                                              "prompt_tokens", "completion_tokens")}}

  def _labels(self) -> list[dict]:
    path = self.workdir / "annotate" / "labels.jsonl"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist: run the annotate stage (it calls the LLM, "
                              f"or with --labels FILE copies labels made elsewhere)")
    return list(ingest_lib.read_jsonl(path))

  def _embed(self) -> dict:
    labels = {l["id"] for l in self._labels()}
    records = [r for r in ingest_lib.read_jsonl(self.records_file()) if r["id"] in labels]
    x_ND = _embed_batched(self.embedder, [r["text"] for r in records], self.config.embed_batch)
    out = self.dir("embed")
    np.save(out / "x.npy", x_ND)
    (out / "ids.json").write_text(json.dumps([r["id"] for r in records]))
    return {"docs_in": len(records), "docs_out": len(records), "dim": int(x_ND.shape[1]),
            "embedder": self.embedder.name,
            "bytes_in": sum(len(r["text"].encode("utf-8", "replace")) for r in records)}

  def _classify(self) -> dict:
    c = self.config
    embed_dir = self.workdir / "embed"
    if not (embed_dir / "x.npy").exists():
      raise FileNotFoundError(f"{embed_dir / 'x.npy'} does not exist: run the embed stage first")
    x_ND = np.load(embed_dir / "x.npy")
    ids = json.loads((embed_dir / "ids.json").read_text())
    label_of = {l["id"]: l["label"] for l in self._labels()}
    classifiers, report = classify_lib.train_and_evaluate(
        x_ND, [label_of.get(i) for i in ids], held_out=c.held_out, threshold=c.threshold,
        positive_label=c.positive_label, seed=c.seed, workers=c.workers,
        embedder=json.loads((embed_dir / "summary.json").read_text()).get("embedder")
        if (embed_dir / "summary.json").exists() else None)
    out = self.dir("classify")
    for kind, classifier in classifiers.items():
      classifier.save(out / f"{kind}.pkl")
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    return {"docs_in": len(ids), "docs_out": len(ids),
            "metrics": {k: {**m["at_threshold"], "roc_auc": m.get("roc_auc")}
                        for k, m in report["models"].items()},
            "held_out": report["held_out"], "train": report["train"]}

  def _score(self) -> dict:
    c = self.config
    classifier = classify_lib.Classifier.load(self.workdir / "classify" / f"{c.classifier}.pkl")
    if classifier.embedder and classifier.embedder != self.embedder.name:
      raise ValueError(f"the classifier was trained on {classifier.embedder!r} embeddings but the "
                       f"embedder is now {self.embedder.name!r}; rerun the embed and classify stages")
    writer = ingest_lib.ResumableJsonlWriter(self.dir("score") / "scores.jsonl",
                                             key=self.fingerprint("score"))
    totals = writer.state or {"bytes": 0, "seconds_embed": 0.0, "seconds_classify": 0.0}
    skip = writer.resumed  # records scored before a kill
    scorer = _BatchScorer(self.embedder, classifier)
    records = _progress(ingest_lib.read_jsonl(self.records_file(), skip), c.progress, "score")
    batches = ingest_lib.batched(records, c.embed_batch)
    pool = None
    # CPU embedders (hashing) fan out over cores; a model embedder keeps its one accelerator.
    if getattr(self.embedder, "parallel_safe", False) and c.workers > 1:
      classifier.model.set_params(**({"n_jobs": 1} if classifier.kind == "random_forest" else {}))
      pool = ingest_lib.process_pool(c.workers)
      results = pool.imap(scorer, ([r["text"] for r in b] for b in batches), chunksize=1)
      pairs = zip(ingest_lib.batched(ingest_lib.read_jsonl(self.records_file(), skip),
                                     c.embed_batch), results)
    else:
      pairs = ((b, scorer([r["text"] for r in b])) for b in batches)
    try:
      for batch, (scores, tokens, t_embed, t_classify) in pairs:
        totals["seconds_embed"] += t_embed
        totals["seconds_classify"] += t_classify
        for r, s, k in zip(batch, scores, tokens):
          writer.write({"id": r["id"], "score": round(float(s), 5), "tokens": k})
        totals["bytes"] += sum(len(r["text"].encode("utf-8", "replace")) for r in batch)
        writer.consumed(writer.written, totals)
      n = writer.finish()
    finally:
      writer.close()
      if pool is not None:
        pool.terminate()
    return {"docs_in": n, "docs_out": n, "bytes_in": totals["bytes"], "classifier": c.classifier,
            "resumed_at_record": skip,
            "worker_seconds_embed": round(totals["seconds_embed"], 3),
            "worker_seconds_classify": round(totals["seconds_classify"], 3)}  # summed over workers

  def _select(self) -> dict:
    c = self.config
    path = self.workdir / "score" / "scores.jsonl"
    if not path.exists():
      raise FileNotFoundError(f"{path} does not exist: run the score stage first")
    # Arrays by position, not 35M dicts: scores.jsonl is in the records' order (checked below).
    scores, tokens = array.array("f"), array.array("q")
    for r in ingest_lib.read_jsonl(path):
      scores.append(r["score"])
      tokens.append(r["tokens"])
    scores, tokens = np.frombuffer(scores, np.float32), np.frombuffer(tokens, np.int64)
    if c.token_budget is not None:
      keep, threshold = select_lib.select(scores, tokens, token_budget=c.token_budget)
    else:
      threshold = c.select_threshold if c.select_threshold is not None else c.threshold
      keep, threshold = select_lib.select(scores, tokens, threshold=threshold)
    wanted = {int(i) for idx in select_lib.example_indices(scores, keep).values() for i in idx}
    ids, texts, n_bytes = {}, {}, 0  # ids and texts of the report's examples only
    out = self.dir("select")

    def kept_records():
      nonlocal n_bytes
      records = ingest_lib.read_jsonl(self.records_file())
      for i, scored in enumerate(ingest_lib.read_jsonl(path)):
        r = next(records, None)
        if r is None or r["id"] != scored["id"]:
          raise ValueError(f"{path} row {i} is {scored['id']!r} but the record there is "
                           f"{r and r['id']!r}: the records changed after scoring; rerun the "
                           "score stage")
        n_bytes += len(r["text"].encode("utf-8", "replace"))
        if i in wanted:
          ids[i], texts[r["id"]] = r["id"], r["text"]
        if keep[i]:
          yield r
      if next(records, None) is not None:
        raise ValueError(f"{self.records_file()} has more records than {path} has scores: rerun "
                         "the score stage")

    n = ingest_lib.write_jsonl(kept_records(), out / "selected.jsonl")
    metrics_path = self.workdir / "classify" / "metrics.json"
    extra = {"classifier_metrics": json.loads(metrics_path.read_text())["models"]
             if metrics_path.exists() else None,
             "selected_by": "token_budget" if c.token_budget is not None else "threshold"}
    report = select_lib.write_report(out, ids, scores, tokens, keep, threshold, texts, extra=extra)
    return {"docs_in": len(scores), "docs_out": n, "bytes_in": n_bytes,
            "tokens_kept": report["tokens_kept"], "tokens_total": report["tokens_total"],
            "effective_threshold": threshold}


class _BatchScorer:
  """texts -> (scores, token counts, embed seconds, classify seconds); picklable for a pool."""

  def __init__(self, embedder, classifier):
    self.embedder, self.classifier = embedder, classifier

  def __call__(self, texts):
    t = time.time()
    x_ND = self.embedder.embed(texts)
    t_embed = time.time() - t
    t = time.time()
    scores = self.classifier.score(x_ND)
    return scores, [select_lib.approx_tokens(x) for x in texts], t_embed, time.time() - t


def _embed_batched(embedder, texts, batch: int) -> np.ndarray:
  parts = [embedder.embed(texts[i:i + batch]) for i in range(0, len(texts), batch)]
  return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)


def _progress(items, enabled: bool, desc: str):
  if not enabled:
    return items
  from tqdm import tqdm
  return tqdm(items, desc=desc, unit="doc", file=sys.stderr)


def format_summary(s: dict) -> str:
  if s.get("status") == "skipped":
    return "skipped"
  return (f"{s.get('docs_in', 0)} in -> {s.get('docs_out', 0)} out in {s.get('seconds', 0):.1f}s "
          f"({s.get('docs_per_s', 0):.0f} docs/s, {s.get('mb_per_s', 0):.2f} MB/s)")
