"""`python -m data_gen filter ...`: the filter pipeline from the command line (see pipeline.py).

  OPENAI_API_KEY=... python -m data_gen filter --input DIR --workdir out/filter       # --preset paper
  OPENAI_API_KEY=... python -m data_gen filter --preset cpu --input default --workdir out/filter

`--preset paper` (the default) is §2.1: GPT-4 answers the paper's educational-value question
(yes/no) for ~100K samples, a random forest on CodeGen-350M-mono embeddings (a save_pretrained
directory, `codegen-350M-mono/` unless `--embedder codegen:DIR`) scores the rest, and ~6B tokens
(counted with CodeGen's tokenizer, phi-1's) are kept. `--preset cpu` sizes it for a CPU machine.
Flags override the preset (data_gen/filtering/presets.py). Labelling prints its cost as it goes;
`--budget-usd` caps it.

Rerunning the same command resumes: finished tasks are not redone. `--executor local|slurm|ray`,
`--tasks N`, `--workers M` (and the Slurm and Ray options) pick where the stages run. Prints one
line per stage and ends with a JSON summary (per-stage counts, seconds, docs/s, MB/s; classifier
metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from data_gen import engine
from data_gen.filtering import annotate as annotate_lib
from data_gen.filtering import embed as embed_lib
from data_gen.filtering import pipeline as pipeline_lib
from data_gen.filtering import presets as presets_lib
from data_gen.filtering import select as select_lib


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Settings flags default to absent (SUPPRESS): only the ones given override the preset."""
  d = pipeline_lib.FilterConfig()
  ap = argparse.ArgumentParser(prog="python -m data_gen filter", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               argument_default=argparse.SUPPRESS)
  ap.add_argument("--preset", default=presets_lib.DEFAULT_PRESET, choices=sorted(presets_lib.PRESETS),
                  help="paper (default): §2.1's settings; cpu: sized for a CPU machine")
  ap.add_argument("--input", help="'default' (installed Python source), 'stdlib', 'site-packages', "
                                  "a dir of .py files, a dir/file of .jsonl[.gz]/.parquet records, "
                                  "a datasets.save_to_disk folder, a Stack Exchange Posts.xml")
  ap.add_argument("--workdir", help=f"default {d.workdir}")
  ap.add_argument("--limit", type=int, help="ingest only the first N inputs (files or rows)")
  ap.add_argument("--max-bytes", type=int, help="skip larger files")
  ap.add_argument("--id-field", help="the records' id field (default id; The Stack's hexsha)")
  ap.add_argument("--text-field", help="the records' text field (default: text, content, or a "
                                       "Q&A layout: question + answers)")
  ap.add_argument("--assign-ids", action="store_true", help="derive '<file>:<row>' ids if missing")
  ap.add_argument("--format", choices=("jsonl", "parquet"), help="record shards: .jsonl.gz or .parquet")
  ap.add_argument("--shingle", type=int, help="MinHash word n-gram size")
  ap.add_argument("--bands", type=int)
  ap.add_argument("--rows", type=int)
  ap.add_argument("--sample-size", type=int, help="records to label (paper: ~100K)")
  ap.add_argument("--sample-seed", type=int)
  ap.add_argument("--model", help="LLM that labels educational value (paper: gpt-4)")
  ap.add_argument("--label-scale", choices=sorted(annotate_lib.SCALES),
                  help="binary (the paper's question, yes/no) or additive (0-5)")
  ap.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OpenAI)")
  ap.add_argument("--concurrency", type=int)
  ap.add_argument("--budget-usd", type=float, help="the most labelling may spend on new requests")
  ap.add_argument("--price-in", type=float, help="USD per 1M prompt tokens (models the table lacks)")
  ap.add_argument("--price-out", type=float, help="USD per 1M completion tokens")
  ap.add_argument("--labels", help="labels.jsonl made elsewhere (skips the LLM)")
  ap.add_argument("--embedder", help="'codegen:DIR' (the paper's CodeGen-350M-mono), 'phi1:DIR', "
                                     "'hashing[:DIM]' (no model), 'sentence-transformers:NAME'")
  ap.add_argument("--embed-batch", type=int)
  ap.add_argument("--classifier", choices=["random_forest", "logistic_regression"])
  ap.add_argument("--n-estimators", type=int)
  ap.add_argument("--held-out", type=float)
  ap.add_argument("--threshold", type=float,
                  help="classifier probability threshold for the metrics (and selection)")
  ap.add_argument("--positive-label", type=int,
                  help="labels >= this count as educational (default: 1 binary, 3 additive)")
  ap.add_argument("--seed", type=int)
  ap.add_argument("--tokenizer", help=f"counts the token budget: {select_lib.TOKENIZERS}")
  ap.add_argument("--select-threshold", type=float)
  ap.add_argument("--token-budget", type=int, help="tokens to keep (paper: ~6B); 0 = none, "
                                                   "select by the threshold instead")
  ap.add_argument("--skip", default="", help=f"comma list of stages to skip: {pipeline_lib.STAGES}")
  ap.add_argument("--no-progress", action="store_true", default=False)
  engine.add_args(ap)
  return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> pipeline_lib.FilterConfig:
  """FilterConfig defaults, then the preset's values, then the flags given."""
  fields = {f for f in pipeline_lib.FilterConfig.__dataclass_fields__}
  values = presets_lib.preset(args.preset)
  values.update({k: v for k, v in vars(args).items() if k in fields})
  if values.get("token_budget") == 0:
    values["token_budget"] = None
  if values.get("select_threshold") is not None and "token_budget" not in vars(args):
    values["token_budget"] = None  # a threshold given replaces the preset's budget
  values["skip"] = tuple(s for s in args.skip.split(",") if s)
  values["progress"] = not args.no_progress and sys.stderr.isatty()
  return pipeline_lib.FilterConfig(**values)


def check(config: pipeline_lib.FilterConfig) -> None:
  """What would otherwise fail hours (and a labelling bill) into the run, said before it starts."""
  if "embed" not in config.skip or "score" not in config.skip:
    embed_lib.check_spec(config.embedder)
  tokenizer = config.tokenizer
  if tokenizer == "embedder" and not config.embedder.startswith(("codegen:", "phi1:", "phi1-hf:")):
    raise ValueError(f"--tokenizer embedder: the {config.embedder!r} embedder has no tokenizer to "
                     f"count tokens with; pass --tokenizer ({select_lib.TOKENIZERS})")
  if tokenizer not in ("embedder", "demo") and not os.path.exists(tokenizer):
    raise FileNotFoundError(f"tokenizer {tokenizer!r} not found; --tokenizer takes "
                            f"{select_lib.TOKENIZERS}")


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    config = config_from_args(args)
    check(config)
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
