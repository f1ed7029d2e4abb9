"""Peak memory per task of every corpus stage, at a given number of records: what to request on Slurm.

    .venv/bin/python bench/filter_memory.py [--rows 100000] [--tasks 4] [--workers 2]

Writes `--rows` synthetic Python files in The Stack's Parquet layout (hexsha, content, path;
row groups of 10,000), labels 1,000 of them (a file with docstrings is "educational": a stand-in
for the LLM, which is not what is measured), and runs the filter pipeline (hashing embedder, the
demo tokenizer, a token budget of a quarter of the tokens) and decontamination (AST only, on the
first `--decontaminate-rows`) on the datatrove engine. Every task records its peak resident
memory (ru_maxrss, data_gen/engine.py's `PeakMemory` step); the table gives, per stage and step,
the largest task's. A task forked from this process starts at this process's size (Linux copies
the high-water mark), printed first; on Slurm each task is a fresh process.

The last line (JSON) holds the figures, the parent's size and the machine's load.
"""

import argparse
import hashlib
import json
import os
import pathlib
import random
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from data_gen import decontaminate_cli, engine  # noqa: E402
from data_gen.filtering import pipeline  # noqa: E402

_WORDS = [f"{a}_{b}" for a in ("get", "set", "load", "parse", "make", "read", "write", "check",
                               "count", "merge") for b in ("item", "value", "node", "path", "size",
                                                           "key", "row", "spec", "name", "line")]


def synthetic_file(rng: random.Random) -> str:
  out = []
  for _ in range(rng.randint(1, 4)):
    name, arg = rng.choice(_WORDS), rng.choice(["x", "data", "items", "path"])
    out.append(f"def {name}_{rng.randrange(10**6)}({arg}, n={rng.randrange(100)}):")
    if rng.random() < 0.4:
      out.append(f'    """{name.replace("_", " ").capitalize()} of {arg}, {rng.randrange(9)} at a time."""')
    for _ in range(rng.randint(2, 6)):
      out.append(f"    {rng.choice(_WORDS)} = {rng.choice(_WORDS)}({arg}, {rng.randrange(1000)})")
    out.append(f"    return {arg}\n")
  return "\n".join(out) + "\n"


def write_corpus(root: pathlib.Path, rows: int, files: int = 4) -> list[tuple[str, str]]:
  rng = random.Random(0)
  root.mkdir(parents=True)
  sample = []
  for f in range(files):
    texts = [synthetic_file(rng) for _ in range(rows // files)]
    ids = [hashlib.sha1(f"{f}-{i}".encode()).hexdigest() for i in range(len(texts))]
    pq.write_table(pa.table({"hexsha": ids, "content": texts, "lang": ["Python"] * len(texts),
                             "max_stars_repo_path": [f"r{f}/m{i}.py" for i in range(len(texts))]}),
                   root / f"train-{f:05d}.parquet", row_group_size=10_000)
    sample += list(zip(ids[:1000 // files], texts[:1000 // files]))
  return sample


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--rows", type=int, default=100_000)
  ap.add_argument("--tasks", type=int, default=4)
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--decontaminate-rows", type=int, default=10_000)
  args = ap.parse_args()
  parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"parent process peak RSS before the stages: {parent_mb:.0f} MB", file=sys.stderr)
  peaks, seconds = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    sample = write_corpus(tmp / "stack", args.rows)
    (tmp / "labels.jsonl").write_text("".join(
        json.dumps({"id": i, "label": int('"""' in t)}) + "\n" for i, t in sample))
    config = pipeline.FilterConfig(input=str(tmp / "stack"), workdir=str(tmp / "w"),
                                   labels=str(tmp / "labels.jsonl"), embedder="hashing",
                                   tokenizer="demo", token_budget=args.rows * 40, n_estimators=50)
    runner = pipeline.Pipeline(config, log=lambda m: print(m, file=sys.stderr),
                               engine_config=engine.EngineConfig(tasks=args.tasks,
                                                                 workers=args.workers))
    for stage, summary in runner.run().items():
      peaks[stage], seconds[stage] = summary["peak_memory_mb"], summary["seconds"]
    t = time.time()
    rc = decontaminate_cli.main(["--input", str(tmp / "w" / "dedup" / "records"), "--out",
                                 str(tmp / "dc"), "--embedder", "none", "--limit",
                                 str(args.decontaminate_rows), "--tasks", str(args.tasks),
                                 "--workers", str(args.workers)])
    if rc != 0:
      raise RuntimeError("decontaminate failed")
    peaks["decontaminate"] = engine.peak_memory_mb(tmp / "dc")
    seconds["decontaminate"] = round(time.time() - t, 1)
  print(f"\n{'stage':14s} {'step':18s} {'peak MB/task':>12s}")
  for stage, steps in peaks.items():
    for step, mb in steps.items():
      print(f"{stage:14s} {step:18s} {mb:12.0f}")
  print(json.dumps({"rows": args.rows, "tasks": args.tasks, "parent_mb": round(parent_mb),
                    "peak_memory_mb": peaks, "seconds": seconds,
                    "decontaminate_rows": args.decontaminate_rows,
                    "load_average_5min": round(os.getloadavg()[1], 1), "cpus": os.cpu_count()}))


if __name__ == "__main__":
  main()
