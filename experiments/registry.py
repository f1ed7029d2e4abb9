"""The results registry: one row per training run, as CSV or Parquet.

  python -m experiments.registry runs/cpu_sweep [runs/other ...] [--out registry.csv]

A row is read from what a run leaves in its workdir: config.json (written by phi1.train.run),
metrics.jsonl (the DESIGN.md contract), run.json and DONE (written by experiments/sweep.py) and
eval_<bench>/summary.json and solution_loss.json (`phi1 eval --out`; without them, the last
pass@1 / solution loss logged during training). Runs trained with plain `phi1 train` get rows too,
named after their directory. Compute is counted as in phi1/flops.py on the model the run built
(its model_fn): tokens = steps x batch x seq_len, FLOPs = tokens x (6N + 6 L T d).

An eval summary stands beside a run only while it scored the weights now in the workdir (the
weights' content fingerprint it records, phi1/fingerprint.py); otherwise its pass@1 is left out and
`<bench>_eval` says why (stale: other weights; unverified: no fingerprint recorded).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import pathlib
import statistics
import sys

from phi1 import atomic, fingerprint, run_identity
from phi1.evals import benchmarks

# The benchmarks a sweep evaluates (phi1/evals/benchmarks.py: those run during training too).
BENCHES = benchmarks.names(in_training=True)
# name -> type; the order is the table's column order.
COLUMNS = {
    "name": str, "family": str, "sweep": str, "experiment": str, "status": str,
    "config_hash": str, "overrides": str,
    "params": int, "matmul_params": int, "n_layers": int, "d_model": int,
    "batch_size": int, "seq_len": int, "steps": int, "tokens": int, "flops": float,
    "final_loss": float, "final_eval_loss": float, "best_eval_loss": float, "best_eval_step": int,
    **{f"{b}_{column}": kind for b in BENCHES
       for column, kind in (("pass@1", float), ("protocol", str))},
    # Why a `phi1 eval` summary in eval_<bench>/ was left out (empty when shown or absent).
    **{f"{b}_eval": str for b in BENCHES},
    # Best-of-N finetunes (experiments/best_of_n.py): pass@1 above is the best checkpoint's; its
    # step, and every evaluated checkpoint's pass@1 as JSON {step: pass@1}.
    **{f"{b}_best_step": int for b in BENCHES}, **{f"{b}_checkpoints": str for b in BENCHES},
    # Reference-solution loss (phi1/evals/solution_loss.py), and on decontamination's split.
    **{f"{b}_solution_loss{part}": float for b in BENCHES
       for part in ("", "_similar", "_non_similar")},
    "wall_s": float, "tokens_per_sec": float, "mfu": float, "workdir": str,
}


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      pass  # a line cut by a kill mid-write
  return rows


def _json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text()) if path.is_file() else {}
  except json.JSONDecodeError:
    return {}


@functools.cache
def _param_counts(model_json: str, model_fn: str) -> tuple[int | None, int | None]:
  """(parameters, matmul parameters) of the model the run built; (None, None) when its model_fn
  cannot be imported here (never the stock model's numbers in its place)."""
  from phi1 import flops
  from phi1.model import Phi1Config
  try:
    return flops.param_counts(Phi1Config(**json.loads(model_json)), model_fn)
  except ValueError:
    return None, None


def run_row(workdir) -> dict:
  """The registry row of one run directory (it must hold config.json)."""
  from phi1 import flops
  from phi1.model import Phi1Config
  workdir = pathlib.Path(workdir).absolute()
  config = _json(workdir / "config.json")
  if not config:
    raise FileNotFoundError(f"{workdir} has no readable config.json: not a training workdir")
  info, identity = _json(workdir / "run.json"), run_identity.read(workdir)
  done = run_identity.done_status(workdir)
  metrics = _read_jsonl(workdir / "metrics.jsonl") if (workdir / "metrics.jsonl").is_file() else []
  model = dict(config["model"])
  model_json = json.dumps(model, sort_keys=True)
  model_fn = config.get("model_fn", "")
  params, matmul = _param_counts(model_json, model_fn)
  steps = max((int(r["step"]) for r in metrics), default=0)
  tokens = steps * int(config["batch_size"]) * int(config["seq_len"])
  per_token = (flops.train_flops_per_token(Phi1Config(**model), int(config["seq_len"]), model_fn)
               if matmul is not None else None)
  train_logs = [r for r in metrics if "loss" in r]
  evals = [r for r in metrics if "eval_loss" in r]
  best = min(evals, key=lambda r: r["eval_loss"], default=None)
  # Throughput and MFU: the median of the logged windows (the trainer keeps compilation out).
  speeds = [r["tokens_per_sec"] for r in train_logs if r.get("tokens_per_sec")]
  mfus = [r["mfu"] for r in train_logs if r.get("mfu")]
  row = {
      "name": info.get("name", workdir.name), "family": info.get("family", workdir.parent.name),
      "sweep": workdir.parent.name, "experiment": info.get("experiment", ""),
      # "stale": a DONE for another config than the one the workdir's checkpoints now hold.
      "status": done or ("done" if steps >= int(config["steps"]) else "partial"),
      "config_hash": (run_identity.recorded_hash(workdir) or info.get("config_hash")
                      or identity.get("config_hash")),
      "overrides": json.dumps(info.get("overrides", {}), sort_keys=True, default=str),
      "params": params, "matmul_params": matmul, "n_layers": model["n_layers"],
      "d_model": model["d_model"], "batch_size": config["batch_size"],
      "seq_len": config["seq_len"], "steps": steps, "tokens": tokens,
      "flops": tokens * per_token if per_token else None,
      "final_loss": train_logs[-1]["loss"] if train_logs else None,
      "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
      "best_eval_loss": best["eval_loss"] if best else None,
      "best_eval_step": best["step"] if best else None,
      "wall_s": info.get("wall_s") or _json(workdir / "DONE").get("wall_s"),
      "tokens_per_sec": statistics.median(speeds) if speeds else None,
      "mfu": statistics.median(mfus) if mfus else None, "workdir": str(workdir),
  }
  for bench in BENCHES:
    summary = _json(workdir / f"eval_{bench}" / "summary.json")
    row[f"{bench}_eval"] = (fingerprint.eval_staleness(summary) if summary else "") or None
    if row[f"{bench}_eval"]:  # another weights' score: never shown beside this run
      summary = {}
    # A separate `phi1 eval` of the final model wins over the in-training value (its protocol).
    row[f"{bench}_pass@1"] = summary.get("pass@1", _last(metrics, f"{bench}_pass@1"))
    offline = _json(workdir / f"eval_{bench}" / "solution_loss.json")
    for part in ("", "_similar", "_non_similar"):
      key = f"solution_loss{part}"
      row[f"{bench}_{key}"] = offline.get(key, _last(metrics, f"{bench}_{key}"))
    row[f"{bench}_protocol"] = (json.dumps(summary["protocol"], sort_keys=True)
                                if "protocol" in summary else None)
    selection = summary.get("selection") or {}
    row[f"{bench}_best_step"] = selection.get("best_step")
    row[f"{bench}_checkpoints"] = (json.dumps(selection["checkpoints"])
                                   if "checkpoints" in selection else None)
  return row


def _last(metrics: list[dict], key: str):
  """The value of `key` at the last step that logged it (evals during training)."""
  return next((r[key] for r in reversed(metrics) if r.get(key) is not None), None)


def collect(roots) -> list[dict]:
  """Rows for every run under `roots`: each a run workdir, or a folder of them (a sweep root)."""
  rows = []
  for root in map(pathlib.Path, roots):
    if not root.exists():
      raise FileNotFoundError(f"{root} does not exist")
    dirs = [root] if (root / "config.json").is_file() else sorted(
        d for d in root.iterdir() if (d / "config.json").is_file())
    rows += [run_row(d) for d in dirs]
  return rows


def write(rows: list[dict], path) -> pathlib.Path:
  """CSV, or Parquet when `path` ends in .parquet; written atomically (phi1/atomic.py)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    schema = pa.schema([(k, types[t]) for k, t in COLUMNS.items()])
    columns = {k: [_typed(r.get(k), t) for r in rows] for k, t in COLUMNS.items()}
    with atomic.replacing(path) as tmp:
      pq.write_table(pa.table(columns, schema=schema), tmp)
  else:
    with atomic.open_for_write(path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
      writer.writeheader()
      for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
  return path


def read(path) -> list[dict]:
  """Rows of a registry file, typed by COLUMNS (missing values are None)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"registry {path} not found (python -m experiments.registry ROOT "
                            "--out FILE writes one; a sweep writes ROOT/registry.csv)")
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq
    raw = pq.read_table(path).to_pylist()
  else:
    with open(path, newline="") as f:
      raw = list(csv.DictReader(f))
  return [{k: _typed(r.get(k), t) for k, t in COLUMNS.items()} for r in raw]


def _typed(value, kind):
  if value is None or value == "":
    return None
  if kind is str:
    return str(value)
  number = float(value)
  if math.isnan(number):
    return None
  return int(number) if kind is int else number


def format_table(rows: list[dict]) -> str:
  show = ("name", "family", "status", "params", "tokens", "flops", "final_eval_loss",
          "best_eval_loss", *(f"{b}_pass@1" for b in BENCHES), "wall_s", "mfu")
  cells = [[_cell(r.get(k)) for k in show] for r in rows]
  widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
            for i, h in enumerate(show)]
  lines = ["  ".join(h.ljust(w) for h, w in zip(show, widths))]
  lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


def _cell(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.registry", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("roots", nargs="+", help="run workdirs or sweep roots")
  p.add_argument("--out", help="write the table here (.csv or .parquet)")
  args = p.parse_args(argv)
  try:
    rows = collect(args.roots)
  except FileNotFoundError as e:
    print(f"registry: {e}", file=sys.stderr)
    return 2
  print(format_table(rows))
  if args.out:
    print(f"wrote {write(rows, args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
