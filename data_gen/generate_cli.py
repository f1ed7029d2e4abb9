"""`python -m data_gen textbooks|exercises ...`: generate, plan (`--plan`) or shard (`--shard I/W`).

    python -m data_gen textbooks --n 1240000 --out data/tb --model gpt-3.5-turbo --plan
    python -m data_gen exercises --n 880000 --out data/ex --model gpt-3.5-turbo --shard 3/8 ...

Rank I of W (`--shard I/W`) owns slots I, I+W, I+2W, ... and writes OUT/rank-IIIII-of-WWWWW/ with
its own cache and manifest, a 1/W share of --n, --rpm, --tpm and --budget-usd; the W directories
together hold the records one unsharded run would (the same slots make the same requests).
"""

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time


def _shard(value: str) -> tuple[int, int]:
  try:
    rank, world = (int(x) for x in value.split("/"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--shard takes I/W (e.g. 0/8), got {value!r}") from None
  if world < 1 or not 0 <= rank < world:
    raise argparse.ArgumentTypeError(f"--shard {value}: need W >= 1 and 0 <= I < W")
  return rank, world


def parser(kind: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"python -m data_gen {kind}",
                              description=f"Generate synthetic {kind} through an OpenAI-compatible API.")
  p.add_argument("--n", type=int, required=True, help="records DIR must hold at the end (all ranks)")
  p.add_argument("--out", required=True, help="output directory (resumable)")
  p.add_argument("--model", required=True)
  p.add_argument("--plan", action="store_true",
                 help="send nothing: print prompt/cell repeat counts, expected tokens and cost as "
                      "one JSON line, and write a sample of prompts to OUT/plan_sample.jsonl")
  p.add_argument("--plan-sample", type=int, default=50, help="prompts in the plan's sample")
  p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/W",
                 help="run rank I of W: slots I, I+W, ...; output in OUT/rank-I-of-W/")
  p.add_argument("--new-run", action="store_true",
                 help="DIR holds records made with other settings: add a second run beside them "
                      "(records tagged by run) instead of refusing")
  p.add_argument("--keep-invalid", action="store_true",
                 help="keep outputs that fail validation, flagged valid=false with the reason (the "
                      "paper trained on unfiltered GPT-3.5 output)")
  p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: OpenAI)")
  p.add_argument("--concurrency", type=int, default=32)
  p.add_argument("--budget-usd", type=float, default=None,
                 help="stop before DIR's total spend (all runs, manifest usage.cost_usd) exceeds this")
  p.add_argument("--seed", type=int, default=0, help="selects the constraint sequence")
  p.add_argument("--revision", default="v1", help="cache salt: change it to regenerate everything")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--max-tokens", type=int, default=2048 if kind == "textbooks" else 1024)
  p.add_argument("--max-tokens-param", choices=("max_tokens", "max_completion_tokens"),
                 default=None, help="the chat parameter that carries --max-tokens (default: "
                 "max_completion_tokens for o-series and gpt-5 onwards, max_tokens otherwise)")
  p.add_argument("--max-rejected-fraction", type=float, default=0.01,
                 help="requests the endpoint rejects (400 context_length_exceeded, "
                      "invalid_value...) or the model refuses twice are skipped and counted; the "
                      "job stops once more than this fraction of --n (at least 10) were rejected")
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
  p.add_argument("--batch-window", type=int, default=4,
                 help="batches in flight at once; the next chunk (<= 50,000 requests, 200 MB) is "
                      "submitted as an earlier one finishes (lower it under an enqueued-token limit)")
  p.add_argument("--no-progress", action="store_true")
  if kind == "textbooks":
    p.add_argument("--topic-tree", default=None,
                   help="topic tree YAML (default OUT/topic_tree.yaml; expanded by the model on "
                        "first use, then reused: review it before a large run)")
    p.add_argument("--tree-width", type=int, default=32, help="leaves asked for per seed subtopic")
    p.add_argument("--expand-topics-only", action="store_true",
                   help="expand the topic tree and stop (before sharded runs, or to review it)")
    p.add_argument("--stdlib-only", action="store_true",
                   help="snippets use the standard library only (default: common libraries such as "
                        "numpy are allowed, as in the paper's textbook example)")
  else:
    p.add_argument("--docstring-examples", action="store_true",
                   help="docstrings with worked examples (default: the paper's Parameters/Returns "
                        "form without examples)")
    p.add_argument("--execute", action="store_true",
                   help="keep only completions that run without error in the evaluation sandbox")
    p.add_argument("--exec-timeout", type=float, default=5.0)
  return p


def _error(message: str, code: int = 2) -> int:
  print(f"error: {message}", file=sys.stderr)
  return code


def _tree_path(args) -> str:
  return args.topic_tree or os.path.join(args.out, "topic_tree.yaml")


def _task(kind: str, args, table: dict, tree: dict | None, checker=None):
  if kind == "textbooks":
    from data_gen.textbooks import TextbookTask
    return TextbookTask(table, seed=args.seed, temperature=args.temperature,
                        max_tokens=args.max_tokens, tree=tree, stdlib_only=args.stdlib_only,
                        keep_invalid=args.keep_invalid)
  from data_gen.exercises import ExerciseTask
  return ExerciseTask(table, seed=args.seed, temperature=args.temperature,
                      max_tokens=args.max_tokens, checker=checker,
                      docstring_examples=args.docstring_examples, keep_invalid=args.keep_invalid)


def settings(kind: str, args, table: dict, tree: dict | None) -> dict:
  """Everything that decides what a record's request or validation is (data_gen/provenance.py)."""
  from data_gen.tables import sha256_of_words
  from data_gen import exercises, textbooks
  common = {"model": args.model, "seed": args.seed, "revision": args.revision,
            "table_sha256": table["_sha256"], "seed_words_sha256": sha256_of_words("seed_words"),
            "temperature": args.temperature, "max_tokens": args.max_tokens,
            "keep_invalid": args.keep_invalid}
  from phi1.llm.request import max_tokens_param_for
  param = args.max_tokens_param or max_tokens_param_for(args.model)
  if param != "max_tokens":  # recorded when it differs from what every earlier run sent
    common["max_tokens_param"] = param
  if kind == "textbooks":
    return {**common, "prompt_version": textbooks.PROMPT_VERSION,
            "topic_tree_sha256": tree and tree.get("_sha256"), "stdlib_only": args.stdlib_only}
  from data_gen.name_space import benchmark_names
  excluded = hashlib.sha256("\n".join(sorted(benchmark_names())).encode()).hexdigest()[:16]
  return {**common, "prompt_version": exercises.PROMPT_VERSION,
          "excluded_names_sha256": excluded, "docstring_examples": args.docstring_examples,
          "execute": args.execute, "exec_timeout": args.exec_timeout if args.execute else None}


def _plan(kind: str, args, table: dict, out_dir: str, slots) -> int:
  from data_gen.plan import plan
  from phi1.llm.pricing import Prices, prices_for
  tree, note = None, None
  if kind == "textbooks":
    from data_gen.topic_tree import load_tree
    if os.path.exists(_tree_path(args)):
      tree = load_tree(_tree_path(args), table)
    else:
      note = (f"topic tree not expanded yet: planned with {args.tree_width} placeholder leaves per "
              "seed subtopic")
  task = _task(kind, args, table, tree)
  prices = Prices(args.price_in, args.price_out) if args.price_in is not None else \
      prices_for(args.model)
  result = plan(task, slots.share(args.n), slots, prices=prices,
                sample_path=os.path.join(out_dir, "plan_sample.jsonl"), sample_size=args.plan_sample)
  result["shard"] = f"{slots.rank}/{slots.world}"
  if note:
    result["topic_tree"] = note
  print(json.dumps(result))
  return 0


def main(kind: str, argv: list[str]) -> int:
  args = parser(kind).parse_args(argv)
  if args.n < 0:
    return _error("--n must be >= 0")
  if not 0.0 <= args.max_rejected_fraction <= 1.0:
    return _error("--max-rejected-fraction must be in [0, 1]")
  if (args.price_in is None) != (args.price_out is None):
    return _error("give both --price-in and --price-out")
  from data_gen.provenance import ProvenanceError, check_shard_layout, rank_dir
  from data_gen.runner import Slots
  from data_gen.tables import load_table
  rank, world = args.shard
  slots = Slots(rank, world)
  out_dir = rank_dir(args.out, rank, world)
  try:
    table = load_table(args.table)
  except (FileNotFoundError, ValueError) as e:
    return _error(str(e))
  if args.plan:  # no key needed: nothing is sent
    try:
      return _plan(kind, args, table, out_dir, slots)
    except ValueError as e:
      return _error(str(e))
  if not os.environ.get("OPENAI_API_KEY"):  # before any work or file is touched
    return _error("OPENAI_API_KEY is not set. Export it first (for a local OpenAI-compatible "
                  "server without auth, any non-empty value works).")
  try:
    check_shard_layout(args.out, world)
  except ProvenanceError as e:
    return _error(str(e))
  if kind == "textbooks" and world > 1 and not os.path.exists(_tree_path(args)):
    return _error(f"no topic tree at {_tree_path(args)}: expand it once before starting ranks "
                  f"(python -m data_gen textbooks --expand-topics-only --out {args.out} ...)")

  from phi1.llm.client import BudgetExhausted, FatalAPIError, RetriesExhausted
  try:
    summary = asyncio.run(_run(kind, args, table, out_dir, slots))
  except SystemExit as e:
    return _error(str(e)) if isinstance(e.code, str) else e.code
  except (FatalAPIError, RetriesExhausted, BudgetExhausted) as e:  # e.g. expanding the topic tree
    return _error(str(e), 1)
  if summary is None:
    return 0
  print(json.dumps({"stored": summary.stored, "requested": summary.requested,
                    "added": summary.added, "stopped": summary.stopped, "rejects": summary.rejects,
                    "invalid_kept": summary.invalid, **summary.llm, "rejected": summary.rejected}))
  if summary.stopped == "budget" and summary.stored == 0:
    print(f"error: the budget (${args.budget_usd} for {args.out}, all runs) stopped the job "
          "before any record was stored: raise --budget-usd (or check --price-in/--price-out).",
          file=sys.stderr)
    return 1
  if summary.stopped == "budget":
    print(f"stopped before exceeding the budget (${args.budget_usd} for {args.out}, all runs); "
          f"{summary.stored} of {summary.requested} records stored. Raise --budget-usd and rerun "
          "to continue.", file=sys.stderr)
    return 0
  if not summary.ok:
    print(f"error: stopped ({summary.stopped}); {summary.stored} of {summary.requested} records "
          "stored. Rerun the same command to resume.", file=sys.stderr)
    return 1
  return 0


async def _run(kind: str, args, table: dict, out_dir: str, slots):
  from phi1.llm.client import LLM, Budget, FatalAPIError, RetryPolicy
  from phi1.llm.pricing import Prices
  from data_gen.provenance import ProvenanceError, choose_run
  from data_gen.runner import generate
  from data_gen.shards import OutputLocked, ShardWriter

  world = slots.world
  prices = Prices(args.price_in, args.price_out) if args.price_in is not None else None
  spent_before = 0.0  # the budget covers the directory, not one invocation
  if os.path.exists(os.path.join(out_dir, "manifest.json")):
    with open(os.path.join(out_dir, "manifest.json")) as f:
      spent_before = json.load(f).get("usage", {}).get("cost_usd", 0.0)
  share = lambda x: None if x is None else x / world  # noqa: E731  a rank's part of a global limit
  try:
    llm = LLM(args.model, base_url=args.base_url, concurrency=args.concurrency,
              requests_per_min=share(args.rpm), tokens_per_min=share(args.tpm),
              cache=args.cache or os.path.join(out_dir, "cache.sqlite"), revision=args.revision,
              retry=RetryPolicy(args.max_attempts, args.backoff_base, args.backoff_max),
              timeout_s=args.timeout, prices=prices, max_tokens_param=args.max_tokens_param,
              budget=(Budget(share(args.budget_usd), spent_usd=spent_before)
                      if args.budget_usd is not None else None))
  except ValueError as e:
    raise SystemExit(str(e))
  checker = None
  try:
    if kind == "textbooks" and args.expand_topics_only:  # no output directory of records yet
      await _topic_tree(kind, args, table, llm)
      return None
    try:
      writer = ShardWriter(out_dir, kind=kind, fmt=args.format, shard_size=args.shard_size)
    except (OutputLocked, ValueError) as e:  # a busy or incompatible --out
      raise SystemExit(str(e))
    with writer:
      tree = await _topic_tree(kind, args, table, llm) if kind == "textbooks" else None
      run_settings = {**settings(kind, args, table, tree), "shard": f"{slots.rank}/{world}"}
      try:
        run, runs = choose_run(writer.meta, run_settings, new_run=args.new_run,
                               has_records=len(writer) > 0)
      except ProvenanceError as e:
        raise SystemExit(f"{out_dir}: {e}")
      writer.update_meta(generation_runs=runs)
      if kind == "exercises" and args.execute:
        from data_gen.exercises import make_checker
        checker = make_checker(args.exec_timeout)
      task = _task(kind, args, table, tree, checker)
      n = slots.share(args.n)
      try:
        if args.backend == "batch":
          from data_gen.batch import generate_with_batches
          summary = await generate_with_batches(task, llm, writer, n, poll_s=args.batch_poll_s,
                                                progress=not args.no_progress, run=run, slots=slots,
                                                max_rejected_fraction=args.max_rejected_fraction,
                                                window=args.batch_window)
        else:
          summary = await generate(task, llm, writer, n, progress=not args.no_progress, run=run,
                                   slots=slots, max_rejected_fraction=args.max_rejected_fraction)
      except FatalAPIError as e:
        raise SystemExit(str(e))
      usage = writer.meta.get("usage", {})
      for field in ("requests", "cache_hits", "retries", "refusals", "prompt_tokens",
                    "completion_tokens"):
        usage[field] = usage.get(field, 0) + summary.llm[field]
      usage["cost_usd"] = usage.get("cost_usd", 0.0) + summary.llm["cost_usd"]  # unrounded: budget
      history = writer.meta.get("runs", [])[-99:] + [{
          "run": run, "finished": time.time(), "added": summary.added, "stopped": summary.stopped,
          "rejects": summary.rejects, "invalid_kept": summary.invalid,
          "rejected": summary.rejected, "cost_usd": round(summary.llm["cost_usd"], 6)}]
      invalid = dict(writer.meta.get("invalid_kept", {}))
      for reason, count in summary.invalid.items():
        invalid[reason] = invalid.get(reason, 0) + count
      writer.update_meta(usage=usage, runs=history, invalid_kept=invalid)
      return summary
  finally:
    await llm.aclose()
    if checker is not None:
      checker.close()


async def _topic_tree(kind: str, args, table: dict, llm) -> dict | None:
  """The tree from its file, expanding it first when there is none; None after
  --expand-topics-only."""
  from data_gen.topic_tree import expand, load_tree, write_tree
  path = _tree_path(args)
  if not os.path.exists(path):
    tree = await expand(llm, table, args.tree_width, args.seed)
    write_tree(path, tree)
    leaves = sum(len(v) for topic in tree["topics"].values() for v in topic.values())
    print(f"topic tree: {leaves} leaves from {sum(len(t) for t in tree['topics'].values())} seed "
          f"subtopics -> {path} (review it; edits change the run's settings)", file=sys.stderr)
  if args.expand_topics_only:
    return None
  try:
    return load_tree(path, table)
  except ValueError as e:
    raise SystemExit(str(e))
