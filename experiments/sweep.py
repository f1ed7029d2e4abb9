"""Sweeps: an experiment file's runs, each a named set of config overrides with its own workdir.

  python -m experiments.sweep experiments/NAME.py[:ARG] [--dry-run] [--only RUN ...]
      [--root DIR] [--set KEY=VALUE ...] [--eval humaneval,mbpp] [--slurm DIR]

An experiment file declares its runs with `get_sweep(arg) -> list[dict]` next to `get_config(arg)`.
Each dict is one run: dotted config keys -> values (`{"model.n_layers": 4, "steps": 100}`), plus
  "name"    the run's name and workdir `<root>/<name>` (default: built from the overrides);
  "family"  which curve the run belongs to in plots (default: the experiment's name);
  "paper"   the paper's figure for this run, {"a100_hours": H, "what": "..."}: `--dry-run` prints
            the MFU those hours imply beside our estimate.
A value may name another run's workdir as "{run:NAME}" (e.g. `"init_from": "{run:base}/export"`):
that run then waits for NAME (locally it comes later in the list; on SLURM an afterok dependency).
`grid()` builds such a list as a cartesian product. A file without get_sweep is one run.

Locally the runs train one after another in this process (`phi1.train.run`); a run whose workdir
holds a `DONE` marker for the same config, or the final step's checkpoint, is skipped, and an
unfinished one resumes from its latest checkpoint. A workdir whose checkpoints came from another
config is refused with the changed keys named, unless --restart or --continue-with-changes
(phi1/run_identity.py; the dry run marks such runs STALE). After each run the registry
(`<root>/registry.csv`, experiments/registry.py) is rewritten. `--slurm DIR` writes one sbatch
script per run and a `submit.sh` instead (multi-host JAX: one task per node, each process calls
jax.distributed.initialize(), which reads the SLURM environment). `--dry-run` prints the runs and
their compute (tokens, FLOPs by phi1/flops.py, GPU-hours on `--gpu` at `--mfu`) with the arithmetic.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import os
import pathlib
import re
import shlex
import sys
import time

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python experiments/sweep.py` as well as `-m experiments.sweep`
  sys.path.insert(0, str(REPO))

from phi1 import config as config_lib, demo_corpus, preemption, run_identity  # noqa: E402
from phi1.run_identity import config_hash  # noqa: E402,F401  (a run's identity, shared)
from experiments.grid import short_label  # noqa: E402  (run names label values as grid does)

DONE = run_identity.DONE  # JSON marker written when a run finished: config hash, wall time, final metrics
RUN_INFO = "run.json"  # name, experiment, overrides, config hash, accumulated wall time
SPECIAL_KEYS = ("name", "family", "paper")
_RUN_REF = re.compile(r"\{run:([A-Za-z0-9._-]+)\}")


@dataclasses.dataclass
class Run:
  name: str
  family: str
  experiment: str  # "experiments/NAME.py[:ARG]" as given
  overrides: dict  # dotted key -> value, "{run:...}" references resolved to paths
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  needs: list  # names of runs whose workdirs this one reads
  paper: dict = dataclasses.field(default_factory=dict)  # the paper's figures for this run

  @property
  def config_hash(self) -> str:
    return config_hash(self.config)


def load_experiment(spec: str):
  """The module of `path/to/NAME.py[:ARG]` and ARG."""
  return config_lib.load_module(spec)


def expand(spec: str, root=None, extra: dict | None = None) -> list[Run]:
  """The runs `spec` declares, each with its config built and checked (unknown keys raise)."""
  module, arg = load_experiment(spec)
  stem = pathlib.Path(spec.partition(":")[0]).stem
  root = pathlib.Path(root or pathlib.Path("runs") / (stem + (f"_{arg}" if arg else ""))).absolute()
  declared = module.get_sweep(arg) if hasattr(module, "get_sweep") else [{"name": stem}]
  if isinstance(declared, dict):
    declared = [declared]
  if not declared:
    raise ValueError(f"{spec}: get_sweep returned no runs")
  names = []
  for i, run in enumerate(declared):
    name = run.get("name") or "_".join(f"{k.split('.')[-1]}-{short_label(v)}"
                                       for k, v in run.items() if k not in SPECIAL_KEYS) or f"run{i}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
      raise ValueError(f"{spec}: run name {name!r} must use only letters, digits, '.', '_', '-'")
    names.append(name)
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"{spec}: run names must be unique; repeated: {duplicates}")

  runs = []
  for name, declared_run in zip(names, declared):
    overrides, needs = {}, []
    for key, value in declared_run.items():
      if key in SPECIAL_KEYS:
        continue
      if isinstance(value, str):
        for ref in _RUN_REF.findall(value):
          if ref not in names[:names.index(name)]:
            raise ValueError(f"{spec}: run {name} refers to {{run:{ref}}}, which is not a run "
                             f"listed before it (runs: {names})")
          needs.append(ref)
        value = _RUN_REF.sub(lambda m: str(root / m.group(1)), value)
      overrides[key] = value
    config = module.get_config(arg) if arg else module.get_config()
    try:
      config_lib.apply_overrides(config, {k: _as_text(v) for k, v in overrides.items()})
      if extra:
        config_lib.apply_overrides(config, dict(extra))
      config_lib.phi1_config(config)  # a model the overrides make impossible fails here, not later
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(f"{spec}: run {name}: {e}") from e
    # --set values arrive as text: record them as the config holds them (10, not "10").
    typed_extra = {k: _lookup(config, k) for k in extra or {}}
    runs.append(Run(name=name, family=str(declared_run.get("family", stem)), experiment=spec,
                    overrides={**overrides, **typed_extra}, config=config,
                    workdir=root / name, needs=sorted(set(needs)),
                    paper=dict(declared_run.get("paper") or {})))
  return runs


def _lookup(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node


def _as_text(value) -> str:
  """apply_overrides parses text (a literal, or a bare string): repr() keeps lists and numbers."""
  return value if isinstance(value, str) else repr(value)


# ------------------------------------------------------------------------------------------ status
def is_done(run: Run) -> bool:
  """DONE for this very config, or (a run trained with `phi1 train`) the final step's checkpoint;
  either only while the workdir's checkpoints are this config's (phi1/run_identity.py)."""
  return run_identity.is_done(run.workdir, run.config)


def _write_json(path: pathlib.Path, obj: dict):
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=2, default=str))
  tmp.replace(path)


def _run_info(run: Run) -> dict:
  path = run.workdir / RUN_INFO
  info = json.loads(path.read_text()) if path.is_file() else {}
  info.update(name=run.name, family=run.family, experiment=run.experiment,
              overrides=run.overrides, config_hash=run.config_hash)
  info.setdefault("wall_s", 0.0)
  return info


# ------------------------------------------------------------------------------------------- local
def train_one(run: Run, *, progress: bool = True, on_change: str = "refuse") -> dict:
  """Train (or resume) one run; DONE and run.json record its config hash and wall time.

  The workdir's config identity is checked before run.json changes, so a refused rerun leaves
  the old run's record (and the registry row) as it was."""
  import jax
  from phi1 import train
  primary = jax.process_index() == 0
  run.workdir.mkdir(parents=True, exist_ok=True)
  for need in run.needs:
    if not (run.workdir.parent / need / DONE).is_file():
      raise RuntimeError(f"run {run.name} needs run {need} finished first (no "
                         f"{run.workdir.parent / need / DONE}); run the sweep without --only")
  run_identity.check_and_record(run.workdir, run.config, on_change=on_change, primary=primary)
  info = _run_info(run)
  if primary:
    _write_json(run.workdir / RUN_INFO, info)
  start = time.perf_counter()
  try:
    last = train.run(run.config, run.workdir, progress=progress, on_change="continue")
  finally:
    info["wall_s"] += time.perf_counter() - start
    if primary:
      _write_json(run.workdir / RUN_INFO, info)
  if primary:
    _write_json(run.workdir / DONE, {
        "config_hash": run.config_hash, "steps": int(run.config.steps), "wall_s": info["wall_s"],
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "final": last})
  return last


def evaluate(run: Run, bench: str, *, limit: int | None, max_new_tokens: int,
             best_of_n: bool = True) -> dict:
  """pass@1 on `bench` (greedy, the paper's protocol), kept in eval_<bench>/: of the run's export,
  or for a finetune (init_from set) with `best_of_n`, of the best of its kept checkpoints
  (experiments/best_of_n.py)."""
  from experiments import best_of_n as best_of_n_lib
  from phi1 import checkpoint
  out = run.workdir / f"eval_{bench}"
  summary_path = out / "summary.json"
  if summary_path.is_file():
    return json.loads(summary_path.read_text())
  options = ["--bench", bench, "--max-new-tokens", str(max_new_tokens), "--no-progress"]
  options += ["--limit", str(limit)] if limit else []
  steps = checkpoint.kept_steps(run.workdir)
  if best_of_n and run.config.init_from and steps:
    return best_of_n_lib.evaluate_checkpoints(
        run.workdir, bench, steps, lambda step, step_out: _eval_cli(
            options + ["--checkpoint", str(run.workdir), "--step", str(step),
                       "--out", str(step_out)], step_out / "summary.json"))
  return _eval_cli(options + ["--checkpoint", str(run.workdir / "export"), "--out", str(out)],
                   summary_path)


def _eval_cli(argv: list[str], summary_path: pathlib.Path) -> dict:
  """`phi1 eval ARGV` in this process; its summary.json."""
  from phi1.evals import cli as eval_cli
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    code = eval_cli.main(argv)
  if code != 0 or not summary_path.is_file():
    raise RuntimeError(f"phi1 eval {' '.join(argv)} failed (exit {code}): {stdout.getvalue()[-500:]}")
  return json.loads(summary_path.read_text())


def run_local(runs: list[Run], *, benches=(), eval_limit=None, max_new_tokens=512,
              progress=True, best_of_n=True, log=print, on_change: str = "refuse"
              ) -> list[Run]:
  """Train every run not yet done, in order; evaluate; rewrite the registry after each."""
  import jax
  from experiments import registry
  trained = []
  for i, run in enumerate(runs, 1):
    if is_done(run):
      log(f"[{i}/{len(runs)}] {run.name}: done already ({run.workdir}), skipped")
    else:
      log(f"[{i}/{len(runs)}] {run.name}: training in {run.workdir}")
      train_one(run, progress=progress, on_change=on_change)
      trained.append(run)
    if jax.process_count() == 1:  # evals run on one host (SLURM jobs call them after srun)
      for bench in benches:
        summary = evaluate(run, bench, limit=eval_limit, max_new_tokens=max_new_tokens,
                           best_of_n=best_of_n)
        chosen = summary.get("selection", {}).get("best_step")
        log(f"  {bench} pass@1 = {summary.get('pass@1')}"
            + (f" (best of {len(summary['selection']['checkpoints'])} checkpoints: step "
               f"{chosen})" if chosen is not None else ""))
    if jax.process_index() == 0:
      registry.write(registry.collect([run.workdir.parent]), run.workdir.parent / "registry.csv")
  return trained


# ----------------------------------------------------------------------------------------- dry run
@dataclasses.dataclass
class Estimate:
  params: int
  matmul_params: int
  tokens: int
  flops_per_token: float
  flops: float
  gpu: str
  peak: float
  mfu: float

  @property
  def gpu_hours(self) -> float:
    return self.flops / (self.peak * self.mfu) / 3600


def estimate(run: Run, gpu: str = "A100", mfu: float = 0.4) -> Estimate:
  from phi1 import flops
  from phi1.model import count_params
  if gpu not in flops.PEAK_FLOPS:
    raise ValueError(f"unknown GPU {gpu!r}; known: {sorted(flops.PEAK_FLOPS)}")
  if not 0 < mfu <= 1:
    raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
  c, model = run.config, config_lib.phi1_config(run.config)
  tokens = int(c.steps) * int(c.batch_size) * int(c.seq_len)
  per_token = flops.train_flops_per_token(model, c.seq_len)
  return Estimate(params=count_params(model), matmul_params=flops.matmul_params(model),
                  tokens=tokens, flops_per_token=per_token, flops=tokens * per_token, gpu=gpu,
                  peak=flops.PEAK_FLOPS[gpu], mfu=mfu)


def explain(run: Run, e: Estimate, gpus: int = 8) -> str:
  c, m = run.config, run.config.model
  attention = 6.0 * m.n_layers * c.seq_len * m.d_model
  hours = e.gpu_hours
  return "\n".join([
      f"{run.name}  ({run.workdir})",
      f"  model       {m.n_layers} layers x d_model {m.d_model} (d_ff {m.d_ff}, {m.n_heads} heads): "
      f"{e.params:,} params, N = {e.matmul_params:,} in matmuls",
      f"  tokens      {c.steps:,} steps x {c.batch_size:,} seq x {c.seq_len:,} tokens = "
      f"{e.tokens:,} ({_human(e.tokens)})",
      f"  FLOPs/token 6 x N + 6 x L x T x d = 6 x {e.matmul_params:.4g} + 6 x {m.n_layers} x "
      f"{c.seq_len} x {m.d_model} = {6.0 * e.matmul_params:.4g} + {attention:.4g} = "
      f"{e.flops_per_token:.4g}",
      f"  FLOPs       {e.tokens:.4g} tokens x {e.flops_per_token:.4g} = {e.flops:.4g}",
      f"  {e.gpu}-hours  {e.flops:.4g} / ({e.peak:.4g} FLOP/s x MFU {e.mfu:g}) / 3600 s = "
      f"{hours:,.4g}  (~{hours / gpus:,.4g} h = {hours / gpus / 24:.3g} days on {gpus} GPUs)",
  ])


def implied_mfu(flops_total: float, gpu_hours: float, gpu: str = "A100") -> float:
  """The MFU at which `flops_total` takes `gpu_hours` on `gpu`."""
  from phi1 import flops
  return flops_total / (gpu_hours * 3600 * flops.PEAK_FLOPS[gpu])


def _paper_line(run: Run, e: Estimate) -> str:
  if "a100_hours" not in run.paper:
    return ""
  from phi1 import flops
  hours, peak = float(run.paper["a100_hours"]), flops.PEAK_FLOPS["A100"]  # the paper's GPU
  return (f"\n  paper       {hours:,.0f} A100-hours ({run.paper.get('what', '')}): implies MFU = "
          f"{e.flops:.4g} / ({hours:,.0f} h x 3600 s x {peak:.4g}) = "
          f"{implied_mfu(e.flops, hours):.3f}")


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.2g} s"
  return f"{seconds / 60:,.1f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"


def _short_value(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _human(n: float) -> str:
  for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.3g}{unit}"
  return f"{n:g}"


def dry_run(runs: list[Run], *, gpu="A100", mfu=0.4, gpus=8, reference_gpu_hours=None,
            log=print) -> list[Estimate]:
  from phi1 import flops
  log(f"{runs[0].experiment}: {len(runs)} run(s); compute by phi1/flops.py (6N + causal "
      f"attention per token, forward + backward; remat recompute not counted), on {gpu} "
      f"({flops.PEAK_FLOPS[gpu] / 1e12:g} TFLOP/s dense bf16/fp16 peak) at MFU {mfu:g}\n")
  from experiments import preflight
  estimates, missing = [], 0
  differs = preflight.differing_keys(runs) if len(runs) > 1 else {}
  if differs and next(iter(differs.values())):
    log("the runs differ in: " + ", ".join(next(iter(differs.values()))) + "\n")
  for run in runs:
    e = estimate(run, gpu, mfu)
    estimates.append(e)
    status = run_identity.status(run.workdir, run.config)
    needs = f"; after {', '.join(run.needs)}" if run.needs else ""
    lines = [explain(run, e, gpus) + _paper_line(run, e)]
    if differs.get(run.name):
      lines.append("  differs     " + ", ".join(f"{k}={_short_value(v)}"
                                                for k, v in differs[run.name].items()))
    if e.flops < preflight.CPU_FLOPS_LIMIT:
      seconds, peak = preflight.cpu_wall_s(e.flops)
      lines.append(f"  CPU wall    {e.flops:.4g} / ({peak / 1e9:.3g} GFLOP/s measured here x MFU "
                   f"{preflight.CPU_MFU:g}) = {_duration(seconds)} (compiles and evals extra)")
    problems = preflight.missing_paths(run)
    missing += len(problems)
    lines += [f"  MISSING     {p}" for p in problems]
    log("\n".join(lines) + f"\n  status      {status}{needs}\n")
  if missing:
    log(f"{missing} input path(s) missing (MISSING above): create them or fix the config first\n")
  total_flops = sum(e.flops for e in estimates)
  total_hours = sum(e.gpu_hours for e in estimates)
  log(f"total: {len(runs)} run(s), {_human(sum(e.tokens for e in estimates))} tokens, "
      f"{total_flops:.4g} FLOPs, {total_hours:,.4g} {gpu}-hours at MFU {mfu:g}")
  if reference_gpu_hours:
    implied = implied_mfu(total_flops, reference_gpu_hours, gpu)
    log(f"reference: {reference_gpu_hours:g} {gpu}-hours for these FLOPs means MFU = "
        f"{total_flops:.4g} / ({reference_gpu_hours:g} h x 3600 s x {flops.PEAK_FLOPS[gpu]:.4g}) "
        f"= {implied:.3f}")
  return estimates


# ------------------------------------------------------------------------------------------- SLURM
def _slurm_time(hours: float) -> str:
  minutes = max(30, int(hours * 60 * 1.25) + 30)  # 25% margin and half an hour for compiles/evals
  days, minutes = divmod(minutes, 24 * 60)
  return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def write_slurm(runs: list[Run], out_dir, *, spec: str, root: pathlib.Path, nodes=1,
                gpus_per_node=8, gpu="A100", mfu=0.4, partition=None, account=None, time=None,
                extra_args=(), eval_args=(), log=print) -> pathlib.Path:
  """One sbatch script per run, and submit.sh that queues them with afterok dependencies."""
  out = pathlib.Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  path, colon, arg = spec.partition(":")  # the job starts in the repository: absolute paths
  spec = str(pathlib.Path(path).absolute()) + colon + arg
  command = [sys.executable, "-m", "experiments.sweep", spec, "--root", str(root), *extra_args]
  submit = ["#!/bin/bash", "# Queues the sweep; runs already done are left out.", "set -euo pipefail",
            f"cd {shlex.quote(str(out))}", "declare -A JOB"]
  for run in runs:
    if is_done(run):
      submit.append(f"# {run.name}: done already")
      continue
    hours = estimate(run, gpu, mfu).gpu_hours / (nodes * gpus_per_node)
    run_cmd = shlex.join(command + ["--only", run.name, "--no-progress"])
    eval_cmd = shlex.join(command + ["--only", run.name, "--no-progress", *eval_args])
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=phi1-{run.name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",  # one JAX process per host drives all its GPUs
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        "#SBATCH --exclusive",
        f"#SBATCH --time={time or _slurm_time(hours)}",
        f"#SBATCH --output={run.workdir}/slurm-%j.out",
        "#SBATCH --open-mode=append",
        *([f"#SBATCH --partition={partition}"] if partition else []),
        *([f"#SBATCH --account={account}"] if account else []),
        f"# estimate: {hours:,.1f} h on {nodes} x {gpus_per_node} {gpu} at MFU {mfu:g}",
        "set -euo pipefail",
        f"cd {shlex.quote(str(REPO))}",
        f"mkdir -p {shlex.quote(str(run.workdir))}",
        # jax.distributed.initialize() takes process id/count and the coordinator (first node of
        # the step) from SLURM_*; phi1 picks that up when SLURM_NTASKS > 1.
        "export JAX_COORDINATOR_PORT=${JAX_COORDINATOR_PORT:-$((20000 + SLURM_JOB_ID % 20000))}",
        f"srun --kill-on-bad-exit=1 {run_cmd}",
    ]
    if eval_args:
      lines.append(f"{eval_cmd}  # evaluation: one process, after training")
    script = out / f"{run.name}.sbatch"
    script.write_text("\n".join(lines) + "\n")
    submit.append('DEPS=""')  # afterok:ID:ID... over the needed runs queued by this script
    submit += [f'DEPS+="${{JOB[{n}]:+:${{JOB[{n}]}}}}"' for n in run.needs]
    submit.append(f"JOB[{run.name}]=$(sbatch --parsable ${{DEPS:+--dependency=afterok$DEPS}} "
                  f"{shlex.quote(script.name)})")
    submit.append(f'echo "{run.name}: job ${{JOB[{run.name}]}}"')
  path = out / "submit.sh"
  path.write_text("\n".join(submit) + "\n")
  path.chmod(0o755)
  log(f"wrote {len(list(out.glob('*.sbatch')))} sbatch script(s) and {path}; run: bash {path}")
  return path


# -------------------------------------------------------------------------------------------- CLI
def _parse_sets(items) -> dict:
  out = {}
  for item in items or []:
    key, eq, value = item.partition("=")
    if not eq:
      raise SystemExit(f"--set {item}: expected KEY=VALUE, e.g. --set steps=10")
    out[key.removeprefix("config.")] = value
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("experiment", help="experiments/NAME.py[:ARG]")
  p.add_argument("--root", help="workdirs go to ROOT/<run name> (default runs/NAME[_ARG])")
  p.add_argument("--only", action="append", help="run only this run (repeatable)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override for every run, e.g. --set steps=10 (repeatable)")
  p.add_argument("--dry-run", action="store_true", help="list runs and estimated compute only")
  p.add_argument("--gpu", default="A100", help="GPU for the estimate (phi1/flops.py PEAK_FLOPS)")
  p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed")
  p.add_argument("--gpus", type=int, default=8, help="GPUs, for the wall-clock estimate")
  p.add_argument("--reference-gpu-hours", type=float,
                 help="print the MFU this many GPU-hours would imply (e.g. the paper's 770)")
  p.add_argument("--eval", default="", help="after training: comma list of humaneval, mbpp")
  p.add_argument("--eval-limit", type=int, help="only the first N problems of each benchmark")
  p.add_argument("--eval-max-new-tokens", type=int, default=512)
  p.add_argument("--eval-export-only", action="store_true",
                 help="evaluate finetunes' final export only, not the best of their kept "
                      "checkpoints (paper §2.3 picks the best)")
  p.add_argument("--slurm", metavar="DIR", help="write sbatch scripts + submit.sh to DIR")
  p.add_argument("--nodes", type=int, default=1)
  p.add_argument("--gpus-per-node", type=int, default=8)
  p.add_argument("--partition")
  p.add_argument("--account")
  p.add_argument("--time", help="SLURM time limit (default: from the estimate, +25%%)")
  p.add_argument("--compile-cache", default=os.path.join(
      demo_corpus.default_cache_dir(), "jax_compilation"),
                 help="JAX persistent compilation cache: runs of one shape compile once ('' = off)")
  p.add_argument("--no-progress", action="store_true")
  change = p.add_mutually_exclusive_group()
  change.add_argument("--restart", action="store_true",
                      help="a run whose checkpoints came from another config starts over (the old "
                           "files move to WORKDIR/superseded/)")
  change.add_argument("--continue-with-changes", action="store_true",
                      help="such a run continues from its latest checkpoint with the new config "
                           "(recorded in WORKDIR/identity.json)")
  args = p.parse_args(argv)
  on_change = "restart" if args.restart else "continue" if args.continue_with_changes else "refuse"

  benches = [b for b in args.eval.split(",") if b]
  unknown = [b for b in benches if b not in ("humaneval", "mbpp")]
  if unknown:
    p.error(f"--eval takes humaneval and/or mbpp, got {unknown}")
  extra = _parse_sets(args.set)
  try:
    runs = expand(args.experiment, args.root, extra)
  except (FileNotFoundError, ValueError) as e:
    print(f"sweep: {e}", file=sys.stderr)
    return 2
  if args.only:
    missing = sorted(set(args.only) - {r.name for r in runs})
    if missing:
      print(f"sweep: no run named {missing}; runs: {[r.name for r in runs]}", file=sys.stderr)
      return 2
    runs = [r for r in runs if r.name in args.only]
  root = runs[0].workdir.parent

  if args.dry_run:
    dry_run(runs, gpu=args.gpu, mfu=args.mfu, gpus=args.gpus,
            reference_gpu_hours=args.reference_gpu_hours)
    return 0
  if args.slurm:
    sets = [x for kv in extra.items() for x in ("--set", f"{kv[0]}={kv[1]}")]
    eval_args = (["--eval", args.eval, "--eval-max-new-tokens", str(args.eval_max_new_tokens)]
                 + (["--eval-limit", str(args.eval_limit)] if args.eval_limit else [])
                 + (["--eval-export-only"] if args.eval_export_only else [])
                 if benches else [])
    write_slurm(runs, args.slurm, spec=args.experiment, root=root, nodes=args.nodes,
                gpus_per_node=args.gpus_per_node, gpu=args.gpu, mfu=args.mfu,
                partition=args.partition, account=args.account, time=args.time,
                extra_args=sets, eval_args=eval_args)
    return 0
  if args.compile_cache:
    import jax
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
  from phi1 import cli
  cli.maybe_init_distributed()  # one process per host under SLURM (see write_slurm)
  start = time.perf_counter()
  try:
    run_local(runs, benches=benches, eval_limit=args.eval_limit,
              max_new_tokens=args.eval_max_new_tokens, progress=not args.no_progress,
              best_of_n=not args.eval_export_only, on_change=on_change)
  except (RuntimeError, run_identity.ConfigChanged) as e:  # say which, no traceback
    print(f"sweep: {e}", file=sys.stderr)
    return 1
  except preemption.Stopped as e:  # SIGTERM/SIGINT: the run saved a checkpoint; rerun resumes
    print(f"sweep: {e}", file=sys.stderr)
    return e.exit_code
  print(f"sweep: {len(runs)} run(s) in {root} ({time.perf_counter() - start:.0f} s); "
        f"registry: {root / 'registry.csv'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
