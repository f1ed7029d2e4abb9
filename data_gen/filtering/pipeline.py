"""The filter pipeline: ingest -> dedup -> annotate -> embed -> classify -> score -> select.

Every stage is a list of datatrove steps (data_gen/engine.py runs them locally, on Slurm or on
Ray); sharded stages run one task per shard and write one record shard per task
(`shard-NNNNN.jsonl.gz` or `.parquet`, records unchanged: id, text, source, kind, python_ok, meta):

  workdir/ingest/records/            every record (N tasks; inputs split between tasks)
  workdir/dedup/records/, clusters/  kept records and duplicate clusters (exact + 4-stage MinHash)
  workdir/annotate/labels.jsonl      LLM labels of the sample (1 task: the LLM's rate limits,
                                     budget and cache are global to the API account)
  workdir/embed/x.npy, ids.json      embeddings of the labelled sample (N tasks, each embedding
                                     the labelled records of its shards; merged in label order)
  workdir/classify/<kind>.pkl        trained classifiers; metrics.json: held-out P/R/F1 + sweep
  workdir/score/scores/              every record's score and token count (N tasks, the model and
                                     classifier loaded once per task)
  workdir/select/selected/           the kept records (a histogram pass, then N filter tasks);
                                     report.json + score_distribution.png

`phi1.data` reads workdir/select/selected/ (or any records/ directory) as it reads data_gen output.
Each stage writes `summary.json` (counts, seconds, docs/s, MB/s). Rerunning a command skips the
finished tasks (datatrove's completion markers); a finished stage whose settings or inputs (or an
upstream stage's) changed runs again from scratch, saying what changed, and a half-finished one
refuses other settings. A setting that names files counts by what they hold, not where they lie
(`contents`): the input files' names, sizes and mtimes, the labels file's sha256, the embedder's
weights, the tokenizer's bytes. Input that yields no record is an error. A stage
named in `skip` does not run (for `dedup`, the ingested records pass straight through);
`labels=FILE` (`--labels`) makes annotate copy labels made elsewhere instead of calling the LLM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Callable

from data_gen import engine
from data_gen.filtering import annotate as annotate_lib
from data_gen.filtering import classify as classify_lib
from data_gen.filtering import dedup as dedup_lib
from data_gen.filtering import embed as embed_lib
from data_gen.filtering import ingest as ingest_lib
from data_gen.filtering import inputs as inputs_lib
from data_gen.filtering import presets as presets_lib
from data_gen.filtering import shard_steps
from data_gen.filtering import stages as stages_lib

STAGES = ("ingest", "dedup", "annotate", "embed", "classify", "score", "select")


@dataclasses.dataclass
class FilterConfig:
  input: str = "default"
  workdir: str = "filter_out"
  limit: int | None = None
  max_bytes: int = ingest_lib.DEFAULT_MAX_BYTES
  id_field: str = "id"
  text_field: str | None = None     # None: text, content (The Stack) or a Q&A layout
  assign_ids: bool = False
  format: str = "jsonl"             # record shards: jsonl(.gz) or parquet
  # dedup (datatrove's defaults)
  shingle: int = 5
  bands: int = 14
  rows: int = 8
  # annotate (defaults: the paper's, data_gen/filtering/presets.py)
  sample_size: int = 100_000       # "~100K" labels (§2.1)
  sample_seed: int = 0
  model: str = "gpt-4"
  label_scale: str = annotate_lib.DEFAULT_SCALE  # the paper's question, yes/no; or "additive" 0-5
  base_url: str | None = None
  concurrency: int = 16
  labels: str | None = None        # labels.jsonl made elsewhere (with annotate skipped)
  budget_usd: float | None = None  # the most labelling may spend on new requests
  price_in: float | None = None    # USD per 1M tokens, for a model the price table lacks
  price_out: float | None = None
  # embed / classify / score
  embedder: str = f"codegen:{presets_lib.PAPER_CODEGEN_DIR}"
  embed_batch: int = 256
  classifier: str = "random_forest"   # which trained classifier scores the corpus
  n_estimators: int = 200
  held_out: float = 0.2
  threshold: float = 0.5
  positive_label: int | None = None   # None: the label scale's (binary 1 = yes; additive 3)
  seed: int = 0
  # token counts (select's budget): "embedder" (its tokenizer), "demo", or a tokenizer path
  tokenizer: str = "embedder"
  # select: one of these; neither = the classifier threshold
  select_threshold: float | None = None
  token_budget: int | None = 6_000_000_000  # ~6B tokens kept (§2.1)
  skip: tuple[str, ...] = ()
  progress: bool = False

  def __post_init__(self):
    if self.label_scale not in annotate_lib.SCALES:
      raise ValueError(f"label_scale must be one of {sorted(annotate_lib.SCALES)}, got "
                       f"{self.label_scale!r}")
    if self.positive_label is None:
      self.positive_label = annotate_lib.SCALES[self.label_scale].positive_label
    if (self.price_in is None) != (self.price_out is None):
      raise ValueError("give both --price-in and --price-out (USD per 1M tokens), or neither")
    unknown = set(self.skip) - set(STAGES)
    if unknown:
      raise ValueError(f"unknown stages to skip {sorted(unknown)}; stages are {STAGES}")
    if self.classifier not in classify_lib.KINDS:
      raise ValueError(f"classifier must be one of {classify_lib.KINDS}, got {self.classifier!r}")
    if self.select_threshold is not None and self.token_budget is not None:
      raise ValueError("select by a threshold or a token budget, not both")


# Which settings each stage's output depends on (its fingerprint also covers its upstream).
_STAGE_KEYS = {
    "ingest": ("input", "limit", "max_bytes", "id_field", "text_field", "assign_ids", "format"),
    "dedup": ("shingle", "bands", "rows"),
    "annotate": ("sample_size", "sample_seed", "model", "labels", "label_scale"),
    "embed": ("embedder",),
    "classify": ("n_estimators", "held_out", "threshold", "positive_label", "seed"),
    "score": ("classifier", "tokenizer"),
    "select": ("select_threshold", "token_budget"),
}


class Pipeline:
  def __init__(self, config: FilterConfig, embedder=None, log: Callable[[str], None] | None = None,
               engine_config: engine.EngineConfig | None = None):
    self.config = config
    self.engine = engine_config or engine.EngineConfig()
    self.workdir = pathlib.Path(config.workdir)
    self._embedder = embedder   # an Embedder object overrides config.embedder (notebooks, tests)
    self._embedder_given = embedder.name if embedder is not None else None
    self.log = log or (lambda msg: print(msg, file=sys.stderr))
    self.summaries: dict[str, dict] = {}
    self._contents: dict[str, str] | None = None

  def contents(self) -> dict[str, str]:
    """The settings that name files, keyed by what the files hold instead of where they lie: the
    input (its files' names as the records carry them, sizes and mtimes: inputs.inputs_fingerprint),
    the labels file (sha256), the embedder's weights and the tokenizer (phi1.fingerprint). A corpus
    or checkpoint moved keeps its finished stages; one rewritten in place runs them again.
    Computed once per run."""
    if self._contents is None:
      from phi1 import fingerprint
      c = self.config
      self._contents = {"ingest.input": f"files {inputs_lib.inputs_fingerprint(c.input)}",
                        "embed.embedder": embed_lib.spec_fingerprint(c.embedder)}
      if c.labels:
        digest = fingerprint.MISSING
        if os.path.isfile(c.labels):
          with open(c.labels, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self._contents["annotate.labels"] = f"sha256 {digest}"
      if c.tokenizer not in ("embedder", "demo"):
        self._contents["score.tokenizer"] = f"file {fingerprint.of_path(c.tokenizer)}"
    return self._contents

  def settings(self, stage: str) -> dict:
    """What a stage's output depends on: its settings, the content fingerprints of its inputs,
    and every upstream stage's."""
    upto = STAGES[:STAGES.index(stage) + 1]
    settings = {f"{s}.{k}": getattr(self.config, k) for s in upto for k in _STAGE_KEYS[s]}
    settings.update({k: v for k, v in self.contents().items() if k.split(".")[0] in upto})
    settings["skipped"] = sorted(set(self.config.skip) & set(upto))
    settings["tasks"] = self.engine.tasks  # the shards: their order is the records' order
    if self._embedder_given is not None and "embed" in upto:
      settings["embedder_object"] = self._embedder_given
    return json.loads(json.dumps(settings, default=str))

  def fingerprint(self, stage: str) -> str:
    return hashlib.sha256(json.dumps(self.settings(stage), sort_keys=True).encode()).hexdigest()[:16]

  def records_dir(self) -> pathlib.Path:
    stage = "ingest" if "dedup" in self.config.skip else "dedup"
    return self.workdir / stage / "records"

  def steps(self, stage: str) -> list[engine.Step]:
    c, tasks, stage_dir = self.config, self.engine.tasks, self.workdir / stage
    extra = {"stage": stage, "fingerprint": self.fingerprint(stage)}
    if stage == "dedup":
      return dedup_lib.steps(str(self.workdir / "ingest" / "records"), str(stage_dir),
                             dedup_lib.DedupConfig(ngram=c.shingle, bands=c.bands, rows=c.rows),
                             tasks, c.format, summary_extra=extra)
    return stages_lib.steps(stage, c, str(self.workdir), str(self.records_dir()), tasks,
                            self._embedder, extra)

  def run(self, stages=STAGES) -> dict[str, dict]:
    engine.require_datatrove()
    depends = None
    for stage in stages:
      stage_dir = self.workdir / stage
      if stage in self.config.skip:
        self.summaries[stage] = {"stage": stage, "status": "skipped"}
        self.log(f"[{stage}] skipped")
        continue
      fingerprint = self.fingerprint(stage)
      steps = self.steps(stage)
      previous = shard_steps.read_summary(stage_dir)
      finished = engine.is_finished(stage_dir, steps)
      if finished and previous and previous.get("fingerprint") == fingerprint:
        previous["status"] = "resumed"
        self.summaries[stage] = previous
        self.log(f"[{stage}] resumed from {stage_dir / 'summary.json'}")
        continue
      if finished or (previous and previous.get("fingerprint") != fingerprint):
        self.log(f"[{stage}] {_changes(stage_dir, self.settings(stage))} since it finished: "
                 "running it again")
        engine.reset(stage_dir)
      if self.engine.executor != "slurm":
        self._check_inputs(stage)
      engine.check_settings(stage_dir, self.settings(stage))
      t0 = time.time()
      depends = engine.run(stage_dir, steps, self.engine, depends=depends, log=self.log)
      if self.engine.executor == "slurm":
        self.summaries[stage] = {"stage": stage, "status": "submitted"}
        continue
      summary = shard_steps.timed(stage_dir, time.time() - t0)
      summary["status"] = "ran"
      summary["peak_memory_mb"] = engine.peak_memory_mb(stage_dir)
      shard_steps.write_summary(stage_dir, summary)
      self.summaries[stage] = summary
      self.log(f"[{stage}] {format_summary(summary)}")
      if stage == "ingest" and not summary.get("docs_out"):
        raise ValueError(f"ingest: {self.config.input!r} yielded 0 records "
                         f"({_skips(summary)}); expected {inputs_lib.LAYOUTS}")
    return self.summaries

  def _check_inputs(self, stage: str) -> None:
    """The clear errors of a stage run before its inputs exist, before any task starts."""
    c = self.config
    needs = {"dedup": self.workdir / "ingest" / "records" / "manifest.json",
             "annotate": None if c.labels else self.records_dir() / "manifest.json",
             "embed": self.workdir / "annotate" / "labels.jsonl",
             "classify": self.workdir / "embed" / "x.npy",
             "score": self.workdir / "classify" / f"{c.classifier}.pkl",  # (its embedder: checked per task)
             "select": self.workdir / "score" / "scores" / "manifest.json"}
    path = needs.get(stage)
    if path is not None and not path.exists():
      upstream = {"embed": "annotate stage (it calls the LLM, or with --labels FILE copies labels "
                           "made elsewhere)"}.get(stage, "stage before it")
      raise FileNotFoundError(f"{path} does not exist: run the {upstream} first")


def _skips(summary: dict) -> str:
  skips = {k: v for k, v in summary.items() if k.startswith(("skipped_", "replaced_")) and v}
  return ", ".join(f"{k} {v}" for k, v in skips.items()) or "nothing skipped"


def _changes(stage_dir: pathlib.Path, settings: dict) -> str:
  """'settings changed (k: a -> b, ...)' against the settings the stage last ran with."""
  path = stage_dir / "_engine" / "settings.json"
  before = json.loads(path.read_text()) if path.exists() else {}
  changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
  if not changed:
    return "its settings changed"
  return "changed: " + ", ".join(f"{k} {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)


def format_summary(s: dict) -> str:
  if s.get("status") == "skipped":
    return "skipped"
  notes = "".join(f", {s[k]} {k.replace('_', ' ')}" for k in
                  ("duplicate_ids", "replaced_undecodable", "replaced_surrogates", "skipped_bad_json")
                  if s.get(k))
  return (f"{s.get('docs_in', 0)} in -> {s.get('docs_out', 0)} out in {s.get('seconds', 0):.1f}s "
          f"({s.get('docs_per_s', 0):.0f} docs/s, {s.get('mb_per_s', 0):.2f} MB/s{notes})")
