"""`python -m data_gen textbooks|exercises|report|filter|dedup|decontaminate ...` (see --help of each).

    export OPENAI_API_KEY=...
    python -m data_gen textbooks --n 20000 --out data/textbooks --model gpt-3.5-turbo --concurrency 64 --budget-usd 50
    python -m data_gen exercises --n 100000 --out data/exercises --model gpt-3.5-turbo --execute
    python -m data_gen report data/exercises

`--n` is the number of valid records DIR holds when the command returns: rerunning the same command
tops up (never overshoots) and pays nothing for answers it already has (they are in DIR/cache.sqlite).
"""

import argparse
import asyncio
import json
import os
import sys
import time

USAGE = "usage: python -m data_gen {textbooks,exercises,report,filter,dedup,decontaminate} ..."


def _generation_parser(kind: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"python -m data_gen {kind}",
                              description=f"Generate synthetic {kind} through an OpenAI-compatible API.")
  p.add_argument("--n", type=int, required=True, help="valid records DIR must hold at the end")
  p.add_argument("--out", required=True, help="output directory (resumable)")
  p.add_argument("--model", required=True)
  p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: OpenAI)")
  p.add_argument("--concurrency", type=int, default=32)
  p.add_argument("--budget-usd", type=float, default=None,
                 help="stop before DIR's total spend (all runs, manifest usage.cost_usd) exceeds this")
  p.add_argument("--seed", type=int, default=0, help="selects the constraint sequence")
  p.add_argument("--revision", default="v1", help="cache salt: change it to regenerate everything")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--max-tokens", type=int, default=2048 if kind == "textbooks" else 1024)
  p.add_argument("--rpm", type=float, default=None, help="requests per minute limit")
  p.add_argument("--tpm", type=float, default=None, help="tokens per minute limit")
  p.add_argument("--timeout", type=float, default=300.0, help="seconds per attempt")
  p.add_argument("--max-attempts", type=int, default=8)
  p.add_argument("--backoff-base", type=float, default=1.0)
  p.add_argument("--backoff-max", type=float, default=60.0)
  p.add_argument("--price-in", type=float, default=None, help="USD per 1M input tokens (override)")
  p.add_argument("--price-out", type=float, default=None, help="USD per 1M output tokens (override)")
  p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
  p.add_argument("--shard-size", type=int, default=10_000)
  p.add_argument("--cache", default=None, help="SQLite cache path (default: OUT/cache.sqlite)")
  p.add_argument("--table", default=kind, help="constraint table: packaged name or YAML path")
  p.add_argument("--backend", choices=("online", "batch"), default="online",
                 help="batch: the OpenAI Batch API (half price, results within 24 h)")
  p.add_argument("--batch-poll-s", type=float, default=30.0)
  p.add_argument("--no-progress", action="store_true")
  if kind == "exercises":
    p.add_argument("--execute", action="store_true",
                   help="keep only completions that run without error in the evaluation sandbox")
    p.add_argument("--exec-timeout", type=float, default=5.0)
  return p


def _generate(kind: str, argv: list[str]) -> int:
  args = _generation_parser(kind).parse_args(argv)
  if not os.environ.get("OPENAI_API_KEY"):  # before any work or file is touched
    print("error: OPENAI_API_KEY is not set. Export it first (for a local OpenAI-compatible "
          "server without auth, any non-empty value works).", file=sys.stderr)
    return 2
  if args.n < 0:
    print("error: --n must be >= 0", file=sys.stderr)
    return 2
  if (args.price_in is None) != (args.price_out is None):
    print("error: give both --price-in and --price-out", file=sys.stderr)
    return 2

  from data_gen.llm import LLM, Budget, FatalAPIError, RetryPolicy
  from data_gen.pricing import Prices
  from data_gen.runner import generate
  from data_gen.shards import OutputLocked, ShardWriter
  from data_gen.tables import load_table

  table = load_table(args.table)
  checker = None
  if kind == "textbooks":
    from data_gen.textbooks import TextbookTask
    task = TextbookTask(table, seed=args.seed, temperature=args.temperature,
                        max_tokens=args.max_tokens)
  else:
    from data_gen.exercises import ExerciseTask, make_checker
    checker = make_checker(args.exec_timeout) if args.execute else None
    task = ExerciseTask(table, seed=args.seed, temperature=args.temperature,
                        max_tokens=args.max_tokens, checker=checker)
  prices = Prices(args.price_in, args.price_out) if args.price_in is not None else None
  spent_before = 0.0  # the budget covers the directory, not one invocation
  if os.path.exists(os.path.join(args.out, "manifest.json")):
    with open(os.path.join(args.out, "manifest.json")) as f:
      spent_before = json.load(f).get("usage", {}).get("cost_usd", 0.0)
  meta = {"model": args.model, "seed": args.seed, "revision": args.revision,
          "table_sha256": table["_sha256"]}

  async def run():
    try:
      llm = LLM(args.model, base_url=args.base_url, concurrency=args.concurrency,
                requests_per_min=args.rpm, tokens_per_min=args.tpm,
                cache=args.cache or os.path.join(args.out, "cache.sqlite"), revision=args.revision,
                retry=RetryPolicy(args.max_attempts, args.backoff_base, args.backoff_max),
                timeout_s=args.timeout, prices=prices,
                budget=(Budget(args.budget_usd, spent_usd=spent_before)
                        if args.budget_usd is not None else None))
    except ValueError as e:
      raise SystemExit(f"error: {e}")
    try:
      with ShardWriter(args.out, kind=kind, fmt=args.format, shard_size=args.shard_size,
                       meta=meta) as writer:
        if args.backend == "batch":
          from data_gen.batch import generate_with_batches
          summary = await generate_with_batches(task, llm, writer, args.n,
                                                poll_s=args.batch_poll_s,
                                                progress=not args.no_progress)
        else:
          summary = await generate(task, llm, writer, args.n, progress=not args.no_progress)
        usage = writer.meta.get("usage", {})
        for field in ("requests", "cache_hits", "retries", "prompt_tokens", "completion_tokens"):
          usage[field] = usage.get(field, 0) + summary.llm[field]
        usage["cost_usd"] = usage.get("cost_usd", 0.0) + summary.llm["cost_usd"]  # unrounded: budget
        runs = writer.meta.get("runs", [])[-99:] + [{
            "finished": time.time(), "added": summary.added, "stopped": summary.stopped,
            "rejects": summary.rejects, "cost_usd": round(summary.llm["cost_usd"], 6)}]
        writer.update_meta(usage=usage, runs=runs)
      return summary
    finally:
      await llm.aclose()
      if checker is not None:
        checker.close()

  try:
    summary = asyncio.run(run())
  except (OutputLocked, ValueError) as e:  # a busy or incompatible --out, a bad table
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FatalAPIError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps({"stored": summary.stored, "requested": summary.requested,
                    "added": summary.added, "stopped": summary.stopped,
                    "rejects": summary.rejects, **summary.llm}))
  if summary.stopped == "budget":
    print(f"stopped before exceeding the budget (${args.budget_usd} for {args.out}, all runs); "
          f"{summary.stored} of {args.n} records stored. Raise --budget-usd and rerun to "
          "continue.", file=sys.stderr)
    return 0
  if not summary.ok:
    print(f"error: stopped ({summary.stopped}); {summary.stored} of {args.n} records stored. "
          "Rerun the same command to resume.", file=sys.stderr)
    return 1
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE + "\n\n" + __doc__)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command in ("textbooks", "exercises"):
    return _generate(command, rest)
  if command == "report":
    from data_gen.report import main as report_main
    return report_main(rest)
  if command == "filter":  # lazy: the filtering stack (sklearn, embedders) loads only when asked
    from data_gen.filtering.cli import main as filter_main
    return filter_main(rest) or 0
  if command == "dedup":
    from data_gen.filtering.dedup import main as dedup_main
    return dedup_main(rest)
  if command == "decontaminate":
    from data_gen.decontaminate import main as decontaminate_main
    return decontaminate_main(rest) or 0
  print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
