"""Decontamination as datatrove steps (data_gen/engine.py runs them; decontaminate.py says what a
match is):
  scan   N tasks  each task builds the benchmark index once and scans its share of the input
                  (`decontaminate.decontaminate`); its pairs and counts go to _work/scan-NNNNN.json
  merge  1 task   joins the tasks' scans in task order: report.json and flagged.jsonl
  prune  N tasks  each task writes its share of the corpus without the records removed at each
                  tau: pruned/tau_<t>/shard-NNNNN.jsonl.gz
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
from datatrove.pipeline.base import PipelineStep

from phi1 import atomic
from data_gen import decontaminate as dc
from data_gen import decontaminate_report, engine, shards
from data_gen.filtering import ingest
from data_gen.filtering.shard_steps import to_record


@dataclasses.dataclass
class Settings:
  input: str
  out: str
  benchmarks: tuple[str, ...]
  config: dc.Config
  embedder: str | None = None
  humaneval_path: str | None = None
  mbpp_path: str | None = None
  limit: int | None = None
  id_field: str = "id"
  text_field: str | None = None
  assign_ids: bool = False
  prune: bool = True

  def problems(self):
    return dc.load_problems(self.benchmarks, humaneval_path=self.humaneval_path,
                            mbpp_path=self.mbpp_path)

  def key(self) -> dict:
    """What the output depends on, each file by what it holds and never by where it lies: the
    input's files (inputs.inputs_fingerprint), the benchmarks' problems as read, the embedder's
    weights. A moved corpus or benchmark file keeps a finished run; a rewritten one does not."""
    from data_gen.filtering import embed, inputs
    key = dataclasses.asdict(self)
    for where in ("input", "out", "humaneval_path", "mbpp_path"):
      del key[where]
    problems = [[p.benchmark, p.task_id, p.prose, p.code] for p in self.problems()]
    key["input_files"] = inputs.inputs_fingerprint(self.input)
    key["problems_sha256"] = hashlib.sha256(json.dumps(problems).encode()).hexdigest()
    key["embedder"] = embed.spec_fingerprint(self.embedder) if self.embedder else None
    return key

  def make_embedder(self):
    if not self.embedder:
      return None
    from data_gen.filtering.embed import make_embedder
    return make_embedder(self.embedder)

  def reader(self) -> ingest.IngestInputs:
    return ingest.IngestInputs(self.input, limit=self.limit, id_field=self.id_field,
                               text_field=self.text_field, assign_ids=self.assign_ids,
                               check_python=False)

  def work(self) -> pathlib.Path:
    return pathlib.Path(self.out) / "_work"


class Scan(PipelineStep):
  type = "data_gen"
  name = "decontaminate scan"

  def __init__(self, settings: Settings):
    super().__init__()
    self.settings = settings

  def run(self, data, rank: int = 0, world_size: int = 1):
    s = self.settings
    result = dc.decontaminate((to_record(d) for d in data), s.problems(), s.config,
                              s.make_embedder())
    work = s.work()
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_json(work / f"scan-{rank:05d}.json", result)
    return iter(())


def merge_results(results: list[dict]) -> dict:
  """The tasks' scans as one (pairs in task order; counts summed; seconds summed over tasks)."""
  pairs, stats = [], dc._zero_stats()
  ast_pairs = np.zeros(len(dc.AST_PAIR_COUNTS), np.int64)
  stats["seconds"] = 0.0
  for result in results:
    pairs.extend(result["pairs"])
    for key in ("records", "bytes", "unparsable", "seconds_embedding", "seconds"):
      stats[key] += result["stats"][key]
    ast_pairs += [result["stats"]["ast_pairs"][k] for k in dc.AST_PAIR_COUNTS]
  stats["ast_pairs"] = dict(zip(dc.AST_PAIR_COUNTS, map(int, ast_pairs)))
  # Every task computes the same embedding threshold (given, or calibrated deterministically).
  threshold = results[0].get("embed_threshold") if results else None
  return {"pairs": pairs, "stats": stats, "embed_threshold": threshold}


class Merge(PipelineStep):
  type = "data_gen"
  name = "decontaminate merge"

  def __init__(self, settings: Settings, tasks: int):
    super().__init__()
    self.settings, self.tasks = settings, tasks

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    s = self.settings
    work = s.work()
    result = merge_results([json.loads((work / f"scan-{r:05d}.json").read_text())
                            for r in range(self.tasks)])
    problems, embedder = s.problems(), s.make_embedder()
    report = decontaminate_report.build_report(result, problems, s.config, embedder)
    out = pathlib.Path(s.out)
    with atomic.open_for_write(out / "flagged.jsonl") as f:
      for p in result["pairs"]:
        f.write(json.dumps({k: v for k, v in p.items() if not k.startswith("_")}) + "\n")
    if s.prune:
      for t in s.config.taus:
        report["taus"][str(t)]["pruned_path"] = str(out / "pruned" / f"tau_{t}")
    (work / "removed.json").write_text(json.dumps(
        {str(t): report["taus"][str(t)]["removed_ids"] for t in s.config.taus}))
    atomic.write_json(out / "report.json", report, indent=1)
    return iter(())


class Prune(PipelineStep):
  type = "data_gen"
  name = "decontaminate prune"

  def __init__(self, settings: Settings):
    super().__init__()
    self.settings = settings

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    s = self.settings
    removed = json.loads((s.work() / "removed.json").read_text())
    for tau, ids in removed.items():
      ids = set(ids)
      records = (to_record(d) for d in s.reader().run(None, rank, world_size))
      shards.write_shard(str(pathlib.Path(s.out) / "pruned" / f"tau_{tau}"), rank,
                         (r for r in records if r["id"] not in ids))
    return iter(())


class Manifests(PipelineStep):
  type = "data_gen"
  name = "decontaminate manifests"

  def __init__(self, settings: Settings):
    super().__init__()
    self.settings = settings

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    for t in self.settings.config.taus:
      shards.write_manifest(str(pathlib.Path(self.settings.out) / "pruned" / f"tau_{t}"),
                            "decontaminated", tau=t)
    return iter(())


def steps(settings: Settings, tasks: int) -> list[engine.Step]:
  out = [engine.Step("scan", [settings.reader(), Scan(settings)], tasks,
                     gpu=settings.embedder is not None),
         engine.Step("merge", [Merge(settings, tasks)], 1)]
  if settings.prune:
    out += [engine.Step("prune", [Prune(settings)], tasks),
            engine.Step("manifests", [Manifests(settings)], 1)]
  return out
