"""Dedup: datatrove's exact dedup, then its 4-stage MinHash near dedup, with code's normalisation.

    python -m data_gen dedup --input DIR --out DIR [--tasks N --workers M --executor local|slurm|ray]

`--input` is a directory of record shards (a filter stage's output, or a textbooks/exercises
output), or raw record files (JSON lines, Parquet, Arrow, .py: ingested first, `--id-field`,
`--text-field`); `--out DIR` gets the kept records as shards in `DIR/records/`, and the duplicate clusters
in `DIR/clusters/` (one row per clustered record: id, kind exact|near, cluster, kept).

Engine steps (data_gen/engine.py runs them; one input shard per task):
  exact_signatures  N tasks  hash of each record's normalised text (line endings, trailing spaces
                             and blank lines do not count: `normalise`)
  exact_find        1 task   equal hashes: every copy after the first is a duplicate
  minhash_signatures N tasks MinHash of the distinct records' token 5-grams: `bands` x `rows`
                             hashes (datatrove's defaults, 14 x 8: P(same bucket) is 0.5 at
                             Jaccard ~0.69 and > 0.99 at 0.9)
  minhash_buckets   bands tasks  records sharing all `rows` hashes of a band are pairs
  minhash_cluster   1 task   union-find over the pairs; one record per cluster is kept
  filter            N tasks  drops exact then near duplicates, writes kept records and clusters
Code normalisation: datatrove's MinHash defaults are for web text (lower-case, punctuation and
digits removed, an English word tokenizer), which collapses code (`a[i] = b(0)` and `a = b` read
the same). Here shingles are n-grams of `CODE_TOKEN` tokens, identifiers, numbers and each
punctuation character as written, on whitespace-collapsed text.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import re
import sys
import time
from typing import Sequence

from data_gen import engine

try:
  from datatrove.utils.word_tokenizers import WordTokenizer
except ImportError:  # engine.require_datatrove() names the pip command before any step is built
  WordTokenizer = object

CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
_TRAILING_WS = re.compile(r"[ \t]+$", re.M)
_BLANK_LINES = re.compile(r"\n\s*\n+")


@dataclasses.dataclass(frozen=True)
class DedupConfig:
  ngram: int = 5
  bands: int = 14
  rows: int = 8
  seed: int = 1

  @property
  def num_perm(self) -> int:
    return self.bands * self.rows


def normalise(text: str) -> str:
  """Text up to trailing spaces, blank lines and line endings: what an exact duplicate ignores."""
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  return _BLANK_LINES.sub("\n", _TRAILING_WS.sub("", text)).strip()


def exact_key(text: str) -> str:
  return hashlib.sha1(normalise(text).encode("utf-8", "replace")).hexdigest()[:16]


def normalised_text(doc) -> str:
  """datatrove's `content_getter` for exact dedup (module level: executors pickle it)."""
  return normalise(doc.text)


# datatrove picks its str or bytes hash by the getter's return annotation, which must be a type
# (this module's postponed annotations would make it the string "str").
normalised_text.__annotations__["return"] = str


def code_tokens(text: str) -> list[str]:
  return CODE_TOKEN.findall(text)


def band_collision_probability(s: float, bands: int = 14, rows: int = 8) -> float:
  """P(two docs with Jaccard s share at least one band)."""
  return 1.0 - (1.0 - s ** rows) ** bands


# ------------------------------------------------------------------------------------------ steps
def _configs(config: DedupConfig):
  from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
  from datatrove.pipeline.dedup.minhash import MinhashConfig
  from datatrove.utils.hashing import HashConfig
  from datatrove.utils.text import TextNormConfig
  exact = ExactDedupConfig(content_getter=normalised_text, hash_config=HashConfig(64, "xxhash"))
  minhash = MinhashConfig(
      n_grams=config.ngram, num_buckets=config.bands, hashes_per_bucket=config.rows,
      seed=config.seed, hash_config=HashConfig(64, "xxhash"),
      norm_config=TextNormConfig(lowercase=False, norm_whitespace=True, remove_punctuation=False,
                                 norm_unicode_diacritics=False, norm_numbers=False))
  return exact, minhash


class CodeWordTokenizer(WordTokenizer):
  """datatrove's word-tokenizer interface over `CODE_TOKEN`."""

  def word_tokenize(self, text: str) -> list[str]:
    return code_tokens(text)

  def sent_tokenize(self, text: str) -> list[str]:
    return text.splitlines()

  def span_tokenize(self, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in CODE_TOKEN.finditer(text)]


class ClusterRows:
  """The duplicate clusters of one task: datatrove's filters hand it the records they drop (as
  their exclusion writer) and, as a pipeline step after them, it sees the kept ones; it writes
  rows {id, kind, cluster, kept} as the task's shard of DIR/clusters/."""

  def __init__(self, out_dir: str):
    self.out_dir, self.rows = out_dir, []

  # exclusion writer protocol (datatrove's filters open it with `with` and call write)
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def write(self, doc, rank: int = 0):
    cluster = doc.metadata.get("minhash_cluster_id", -1)
    if cluster is not None and cluster >= 0:
      self.rows.append({"id": doc.id, "kind": "near", "cluster": f"near-{cluster}", "kept": False})
    else:
      self.rows.append({"id": doc.id, "kind": "exact", "cluster": f"exact-{exact_key(doc.text)}",
                        "kept": False})

  # pipeline step protocol
  def __call__(self, data, rank: int = 0, world_size: int = 1):
    from data_gen import shards
    for doc in data:
      if doc.metadata.pop("duplicate_count", 0):
        self.rows.append({"id": doc.id, "kind": "exact",
                          "cluster": f"exact-{exact_key(doc.text)}", "kept": True})
      cluster = doc.metadata.pop("minhash_cluster_id", -1)
      if cluster is not None and cluster >= 0:
        self.rows.append({"id": doc.id, "kind": "near", "cluster": f"near-{cluster}", "kept": True})
      yield doc
    shards.write_shard(self.out_dir, rank, self.rows)
    self.rows = []


def steps(input_dir: str, out_dir: str, config: DedupConfig, tasks: int, fmt: str = "jsonl",
          stage_dir: str | None = None, summary_extra: dict | None = None) -> list[engine.Step]:
  """The engine steps that deduplicate `input_dir` into out_dir/records (+ out_dir/clusters)."""
  from datatrove.pipeline.dedup.exact_dedup import (ExactDedupFilter, ExactDedupSignature,
                                                    ExactFindDedups)
  from datatrove.pipeline.dedup.minhash import (MinhashDedupBuckets, MinhashDedupCluster,
                                                MinhashDedupFilter, MinhashDedupSignature)
  from data_gen.filtering.shard_steps import FinishStage, ReadShards, WriteShard
  stage_dir = stage_dir or out_dir
  work = pathlib.Path(stage_dir) / "_work"
  exact, minhash = _configs(config)
  clusters = ClusterRows(str(pathlib.Path(out_dir) / "clusters"))
  records_dir = str(pathlib.Path(out_dir) / "records")
  summary = _Summary(config)
  return [
      engine.Step("exact_signatures", [ReadShards(input_dir),
                                       ExactDedupSignature(str(work / "exact_sigs"), exact)], tasks),
      engine.Step("exact_find", [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"),
                                                 exact)], 1),
      engine.Step("minhash_signatures", [
          ReadShards(input_dir), ExactDedupFilter(str(work / "exact_dups"), exact),
          MinhashDedupSignature(str(work / "minhash_sigs"), minhash,
                                language=CodeWordTokenizer("code"))], tasks),
      engine.Step("minhash_buckets", [MinhashDedupBuckets(
          str(work / "minhash_sigs"), str(work / "minhash_buckets"), config=minhash)],
          config.bands),
      engine.Step("minhash_cluster", [MinhashDedupCluster(
          str(work / "minhash_buckets"), str(work / "minhash_clusters"), config=minhash,
          save_cluster_id=True)], 1),
      engine.Step("filter", [
          ReadShards(input_dir),
          ExactDedupFilter(str(work / "exact_dups"), exact, exclusion_writer=clusters),
          MinhashDedupFilter(str(work / "minhash_clusters"), exclusion_writer=clusters,
                             load_cluster_ids=True),
          clusters, WriteShard(records_dir, fmt)], tasks),
      engine.Step("finish", [FinishStage(stage_dir, {records_dir: "dedup",
                                                     str(pathlib.Path(out_dir) / "clusters"):
                                                     "dedup_clusters"}, summary,
                                         summary_extra=summary_extra)], 1),
  ]


@dataclasses.dataclass
class _Summary:
  config: DedupConfig

  def __call__(self, stats: dict) -> dict:
    from data_gen.filtering.shard_steps import count
    filter_stats = stats.get("filter", {})
    exact = sum(v.get("dropped", 0) for k, v in filter_stats.items() if "exact" in k)
    near = sum(v.get("dropped", 0) for k, v in filter_stats.items() if "MinHash" in k)
    return {"docs_in": count(stats, "filter", "docs_in"), "bytes_in": count(stats, "filter", "bytes_in"),
            "docs_out": count(stats, "filter", "docs_out"), "kept": count(stats, "filter", "docs_out"),
            "exact_duplicates": int(exact), "near_duplicates": int(near),
            "unreadable_shards": count(stats, "filter", "unreadable_shards"),
            "settings": dataclasses.asdict(self.config)}


def settings(input_dir: str, config: DedupConfig, tasks: int, fmt: str) -> dict:
  """What the output depends on; the input by what its files are, not where it lies."""
  from data_gen.filtering import inputs
  return {"tasks": tasks, "format": fmt, "input_fingerprint": inputs.inputs_fingerprint(input_dir),
          **dataclasses.asdict(config)}


def ingest_steps(source: str, out_dir: str, tasks: int, args) -> list[engine.Step]:
  """Raw record files (JSON lines, Parquet, Arrow, .py files) as shards in `out_dir`, for a
  dedup (or decontamination) of input that no stage has written."""
  from data_gen.filtering import ingest
  from data_gen.filtering.shard_steps import WriteShard
  return [engine.Step("ingest", [
      ingest.IngestInputs(source, id_field=args.id_field, text_field=args.text_field,
                          assign_ids=args.assign_ids), WriteShard(out_dir)], tasks)]


# -------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  d = DedupConfig()
  ap = argparse.ArgumentParser(prog="python -m data_gen dedup", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--input", required=True,
                  help="record shards (a stage's output), or record files (.jsonl[.gz], Parquet, "
                       "Arrow, .py files: ingested first)")
  ap.add_argument("--id-field", default="id", help="raw input: the id field (or hexsha)")
  ap.add_argument("--text-field", default=None, help="raw input: the text field")
  ap.add_argument("--assign-ids", action="store_true", help="raw input: '<file>:<row>' ids")
  ap.add_argument("--out", required=True, help="output: records/ (kept) and clusters/")
  ap.add_argument("--shingle", type=int, default=d.ngram, help="MinHash token n-gram size")
  ap.add_argument("--bands", type=int, default=d.bands)
  ap.add_argument("--rows", type=int, default=d.rows)
  ap.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
  engine.add_args(ap)
  return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    config = DedupConfig(ngram=args.shingle, bands=args.bands, rows=args.rows)
    engine_config = engine.from_args(args)
    from data_gen.filtering import shard_steps
    input_dir, first = args.input, []
    if not shard_steps.is_shard_directory(args.input):
      from data_gen.filtering import inputs
      if not pathlib.Path(args.input).exists():
        raise FileNotFoundError(f"{args.input} does not exist; expected finished record shards "
                                f"(a stage's output) or {inputs.LAYOUTS}")
      input_dir = str(pathlib.Path(args.out) / "_input" / "records")
      first = ingest_steps(args.input, input_dir, engine_config.tasks, args)
    engine.check_settings(args.out, {**settings(args.input, config, engine_config.tasks, args.format),
                                     "id_field": args.id_field, "text_field": args.text_field,
                                     "assign_ids": args.assign_ids})
    t0 = time.time()
    engine.run(args.out, first + steps(input_dir, args.out, config, engine_config.tasks,
                                       args.format), engine_config)
  except (FileNotFoundError, ValueError, ImportError, engine.StageFailed) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if engine_config.executor == "slurm":
    print(json.dumps({"submitted": True, "out": args.out}))
    return 0
  summary = shard_steps.timed(args.out, time.time() - t0)
  if not summary.get("docs_in"):
    from data_gen.filtering import inputs
    print(f"error: {args.input} yielded 0 records to deduplicate; expected record shards or "
          f"{inputs.LAYOUTS}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0
