"""`python -m data_gen filter ...`: the filter pipeline from the command line (see pipeline.py).

  OPENAI_API_KEY=... python -m data_gen filter --input default --workdir out/filter \\
      --model gpt-4 --sample-size 2000 --embedder phi1:CKPT_DIR --token-budget 6000000000

Rerunning the same command resumes: finished tasks are not redone. `--executor local|slurm|ray`,
`--tasks N`, `--workers M` (and the Slurm and Ray options) pick where the stages run. Prints one line per stage and
ends with a JSON summary (per-stage counts, seconds, docs/s, MB/s; classifier metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from data_gen import engine
from data_gen.filtering import pipeline as pipeline_lib


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  d = pipeline_lib.FilterConfig()
  ap = argparse.ArgumentParser(prog="python -m data_gen filter", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--input", default=d.input,
                  help="'default' (installed Python source), 'stdlib', 'site-packages', a dir of .py "
                       "files, a dir/file of .jsonl[.gz]/.parquet records")
  ap.add_argument("--workdir", default=d.workdir)
  ap.add_argument("--limit", type=int, default=None,
                  help="ingest only the first N inputs (files or rows)")
  ap.add_argument("--max-bytes", type=int, default=d.max_bytes, help="skip larger files")
  ap.add_argument("--id-field", default=d.id_field)
  ap.add_argument("--assign-ids", action="store_true", help="derive '<file>:<row>' ids if missing")
  ap.add_argument("--format", choices=("jsonl", "parquet"), default=d.format,
                  help="record shards: .jsonl.gz or .parquet")
  ap.add_argument("--shingle", type=int, default=d.shingle, help="MinHash word n-gram size")
  ap.add_argument("--bands", type=int, default=d.bands)
  ap.add_argument("--rows", type=int, default=d.rows)
  ap.add_argument("--sample-size", type=int, default=d.sample_size, help="records to label")
  ap.add_argument("--sample-seed", type=int, default=d.sample_seed)
  ap.add_argument("--model", default=d.model, help="LLM that labels educational value")
  ap.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: OpenAI)")
  ap.add_argument("--concurrency", type=int, default=d.concurrency)
  ap.add_argument("--labels", default=None, help="labels.jsonl made elsewhere (skips the LLM)")
  ap.add_argument("--embedder", default=d.embedder,
                  help="'phi1:DIR' (the paper's recipe on our model), 'hashing[:DIM]' (no model), "
                       "'sentence-transformers:NAME'")
  ap.add_argument("--embed-batch", type=int, default=d.embed_batch)
  ap.add_argument("--classifier", default=d.classifier, choices=["random_forest",
                                                                 "logistic_regression"])
  ap.add_argument("--n-estimators", type=int, default=d.n_estimators)
  ap.add_argument("--held-out", type=float, default=d.held_out)
  ap.add_argument("--threshold", type=float, default=d.threshold,
                  help="classifier probability threshold for the metrics (and selection)")
  ap.add_argument("--positive-label", type=int, default=d.positive_label,
                  help="LLM labels >= this (0-5) count as educational")
  ap.add_argument("--seed", type=int, default=d.seed)
  ap.add_argument("--select-threshold", type=float, default=None)
  ap.add_argument("--token-budget", type=int, default=None)
  ap.add_argument("--skip", default="", help=f"comma list of stages to skip: {pipeline_lib.STAGES}")
  ap.add_argument("--no-progress", action="store_true")
  engine.add_args(ap)
  return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> pipeline_lib.FilterConfig:
  fields = {f for f in pipeline_lib.FilterConfig.__dataclass_fields__}
  values = {k: v for k, v in vars(args).items() if k in fields}
  values["skip"] = tuple(s for s in args.skip.split(",") if s)
  values["progress"] = not args.no_progress and sys.stderr.isatty()
  return pipeline_lib.FilterConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    config = config_from_args(args)
    summaries = pipeline_lib.Pipeline(config, engine_config=engine.from_args(args)).run()
  except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  metrics = summaries.get("classify", {}).get("metrics")
  print(json.dumps({"workdir": config.workdir, "classifier_metrics": metrics,
                    "stages": {name: {k: s.get(k) for k in ("status", "docs_in", "docs_out",
                                                             "seconds", "docs_per_s", "mb_per_s")}
                               for name, s in summaries.items()}}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
