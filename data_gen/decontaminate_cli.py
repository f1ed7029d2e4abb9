"""`python -m data_gen decontaminate`: prune a corpus of what resembles HumanEval (paper §5).

  python -m data_gen decontaminate --input DIR --out DIR [--bench humaneval] [--embedder codegen:DIR]

The method is data_gen/decontaminate.py's (n-gram, embedding distance, AST match rate), the report
data_gen/decontaminate_report.py's, the engine steps data_gen/decontaminate_steps.py's. By default
a record is removed when its CodeGen-Mono-350M embedding distance to a HumanEval problem is under
the calibrated threshold OR its AST match rate reaches tau, as §5 describes; `--embedder
codegen:DIR` names the model's `save_pretrained` directory (default `codegen-350M-mono`), and
`--embedder none` runs the AST measure alone (said in the report). `--out DIR` gets report.json,
flagged.jsonl and pruned/tau_<t>/ record shards; rerunning the same command after a kill skips
the finished tasks.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

from phi1.evals import benchmarks
from data_gen import decontaminate as dc
from data_gen import decontaminate_report, decontaminate_steps, engine
from data_gen.filtering import inputs
from data_gen.filtering import presets

DEFAULT_EMBEDDER = f"codegen:{presets.PAPER_CODEGEN_DIR}"   # §5: CodeGen-Mono-350M


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m data_gen decontaminate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--input", required=True,
                  help="records: dir of .jsonl/.parquet, a dir of .py files, a file, or 'default'")
  ap.add_argument("--bench", default=",".join(dc.DEFAULT_BENCHMARKS),
                  help=f"comma list from: {', '.join(benchmarks.names(decontamination=True))} "
                       "(default: humaneval, as Table 3)")
  ap.add_argument("--out", required=True, help="output dir: report.json, flagged.jsonl, pruned/")
  ap.add_argument("--taus", default=",".join(map(str, dc.TAUS)))
  ap.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                  help="'codegen:DIR' (a CodeGenForCausalLM save_pretrained directory: the "
                       f"paper's CodeGen-Mono-350M; default {DEFAULT_EMBEDDER}), 'phi1:DIR', "
                       "'hashing', 'sentence-transformers:NAME', or 'none' (AST measure only)")
  ap.add_argument("--embed-threshold", default="auto",
                  help="L2 distance under which a pair is close; 'auto' (default) calibrates it "
                       "per embedder (see --calibration-fpr)")
  ap.add_argument("--calibration-fpr", type=float, default=dc.CALIBRATION_FPR,
                  help="'auto' threshold: this fraction of clean standard-library functions fall under it")
  ap.add_argument("--ngram-n", type=int, default=dc.NGRAM_N)
  ap.add_argument("--remove-by", default=",".join(dc.DEFAULT_REMOVE_BY),
                  help="measures that prune, from: ngram, embedding, ast (ngram is only reported "
                       "unless named here)")
  ap.add_argument("--combine", default="union", choices=dc.COMBINE,
                  help="union: embedding OR AST flags a record; embedding_then_ast: both, per pair")
  ap.add_argument("--humaneval-path", default=None)
  ap.add_argument("--mbpp-path", default=None, help="default: the copy shipped in phi1/evals/data/")
  ap.add_argument("--limit", type=int, default=None, help="only the first N records")
  ap.add_argument("--id-field", default="id")
  ap.add_argument("--text-field", default=None, help="the records' text field (default: text, "
                                                     "content or a Q&A layout)")
  ap.add_argument("--assign-ids", action="store_true")
  ap.add_argument("--no-prune", action="store_true", help="skip writing the pruned copies")
  engine.add_args(ap)
  return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> dc.Config:
  try:
    taus = tuple(float(t) for t in args.taus.split(","))
    threshold = None if args.embed_threshold == "auto" else float(args.embed_threshold)
  except ValueError:
    raise ValueError(f"--taus takes numbers like 0.95,0.8 and --embed-threshold a number or "
                     f"'auto'; got {args.taus!r} and {args.embed_threshold!r}") from None
  return dc.Config(taus=taus, ngram_n=args.ngram_n, embed_threshold=threshold,
                calibration_fpr=args.calibration_fpr,
                remove_by=tuple(m for m in args.remove_by.split(",") if m), combine=args.combine)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  embedder = None if args.embedder in ("none", "") else args.embedder
  try:
    config = config_from_args(args)
    if config.combine == "embedding_then_ast" and not embedder:
      raise ValueError("--combine embedding_then_ast needs an embedder (--embedder codegen:DIR)")
    if embedder:
      from data_gen.filtering import embed
      try:
        embed.check_spec(embedder)
      except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{e}; or --embedder none to prune by the AST match rate alone") from None
    settings = decontaminate_steps.Settings(
        input=args.input, out=args.out, benchmarks=tuple(b for b in args.bench.split(",") if b),
        config=config, embedder=embedder, humaneval_path=args.humaneval_path,
        mbpp_path=args.mbpp_path, limit=args.limit, id_field=args.id_field,
        text_field=args.text_field, assign_ids=args.assign_ids, prune=not args.no_prune)
    engine_config = engine.from_args(args)
    # (key() reads the problems: bad benchmark names or paths are said now, not in a task)
    engine.check_settings(out, {**settings.key(), "tasks": engine_config.tasks})
    engine.run(out, decontaminate_steps.steps(settings, engine_config.tasks), engine_config)
    if engine_config.executor == "slurm":
      print(json.dumps({"submitted": True, "out": str(out)}))
      return 0
    report = json.loads((out / "report.json").read_text())
    if not report["records"]:
      raise ValueError(f"{args.input} yielded 0 records to decontaminate; expected "
                       f"{inputs.LAYOUTS}")
  except (FileNotFoundError, ValueError, ImportError, engine.StageFailed) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for line in decontaminate_report.summary_lines(report):
    print(line, file=sys.stderr)
  summary = {t: {"removed": v["removed"], "paper_removed": v["paper_removed"],
                 **{b: f"{s['n_similar']} similar / {s['n_non_similar']}"
                    for b, s in v["split"].items()}}
             for t, v in report["taus"].items()}
  print(json.dumps({"records": report["records"], "seconds": report["seconds"],
                    "embedding": report["measures"]["embedding"].get("enabled"),
                    "embed_threshold": report["measures"]["embedding"].get("threshold"),
                    "remove_by": report["remove_by"], "taus": summary, "out": str(out)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
