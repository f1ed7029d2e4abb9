"""Sweeps: an experiment file's runs, each a named set of config overrides with its own workdir.

  python -m experiments.sweep experiments/NAME.py[:ARG] [--dry-run] [--only RUN ...]
      [--root DIR] [--set KEY=VALUE ...] [--eval humaneval,mbpp] [--slurm DIR] [--status]

The runs an experiment file declares (`get_sweep`, `{run:NAME}` references, families) are read by
experiments/runs.py; the dry run is experiments/dry_run.py; Slurm scripts experiments/slurm.py.

Locally the runs train one after another in this process (`phi1.train.run`); a run whose workdir
holds a `DONE` marker for the same config, or the final step's checkpoint, is skipped, and an
unfinished one resumes from its latest checkpoint. A workdir whose checkpoints came from another
config is refused with the changed keys named, unless --restart or --continue-with-changes
(phi1/run_identity.py; the dry run marks such runs STALE). After each run the registry
(`<root>/registry.csv`, experiments/registry.py) is rewritten. `--slurm DIR` writes one sbatch
script per run and a `submit.sh` instead (multi-host JAX: one task per node, each process calls
jax.distributed.initialize(), which reads the SLURM environment; preemption and requeue as
experiments/slurm.py describes); `--status` shows each submitted run's jobs and workdir. `--dry-run`
prints the runs and their compute (tokens, FLOPs by phi1/flops.py, GPU-hours on `--gpu` at
`--mfu`) with the arithmetic.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python experiments/sweep.py` as well as `-m experiments.sweep`
  sys.path.insert(0, str(REPO))

from phi1 import config as config_lib, demo_corpus, preemption, run_identity  # noqa: E402,F401
from phi1.run_identity import config_hash  # noqa: E402,F401  (a run's identity, shared)
from phi1.evals import benchmarks  # noqa: E402
from experiments.runs import (DONE, RUN_INFO, Run, expand, is_done, load_experiment,  # noqa: E402,F401
                              run_info, write_json)
from experiments.dry_run import Estimate, dry_run, estimate, explain, implied_mfu  # noqa: E402,F401
from experiments import slurm  # noqa: E402
from experiments.slurm import write_slurm  # noqa: E402


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
  demo_corpus.build_if_named(run.config.data)  # CPU experiments only name its files
  run_identity.check_and_record(run.workdir, run.config, on_change=on_change, primary=primary)
  info = run_info(run)
  if primary:
    write_json(run.workdir / RUN_INFO, info)
  start = time.perf_counter()
  try:
    last = train.run(run.config, run.workdir, progress=progress, on_change="continue")
  finally:
    info["wall_s"] += time.perf_counter() - start
    if primary:
      write_json(run.workdir / RUN_INFO, info)
  if primary:
    from phi1 import fingerprint
    write_json(run.workdir / DONE, {
        "config_hash": run.config_hash, "steps": int(run.config.steps), "wall_s": info["wall_s"],
        # What the finished run read and made, by content (phi1/fingerprint.py).
        "data": fingerprint.of_data(run.config.data.to_dict()),
        "weights": fingerprint.of_weights(str(run.workdir / "export")),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "final": last})
  return last


def evaluate(run: Run, bench: str, *, limit: int | None, max_new_tokens: int,
             best_of_n: bool = True) -> dict:
  """pass@1 on `bench` (greedy, the paper's protocol), kept in eval_<bench>/: of the run's export,
  or for a finetune (init_from set) with `best_of_n`, of the best of its kept checkpoints
  (experiments/best_of_n.py)."""
  from experiments import best_of_n as best_of_n_lib
  from phi1 import fingerprint
  out = run.workdir / f"eval_{bench}"
  summary_path = out / "summary.json"
  if summary_path.is_file():
    summary = json.loads(summary_path.read_text())
    stale = fingerprint.eval_staleness(summary)
    if not stale:
      return summary
    # It scored other weights (a retrained export): evaluate again, the old folder kept aside.
    aside = out.with_name(f"{out.name}.stale-{int(time.time())}")
    print(f"  {summary_path}: {stale}; moved to {aside}, evaluating again")
    out.rename(aside)
  from phi1.evals import cli as eval_cli
  options = dict(max_new_tokens=max_new_tokens, no_progress=True, limit=limit or None)
  steps = run_identity.kept_steps(run.workdir)
  if best_of_n and run.config.init_from and steps:
    return best_of_n_lib.evaluate_checkpoints(
        run.workdir, bench, steps, lambda step, step_out: eval_cli.evaluate(
            bench, checkpoint=str(run.workdir), step=step, out=str(step_out), **options))
  return eval_cli.evaluate(bench, checkpoint=str(run.workdir / "export"), out=str(out), **options)


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


# -------------------------------------------------------------------------------------------- CLI
def _parse_sets(items) -> dict:
  out = {}
  for item in items or []:
    key, eq, value = item.partition("=")
    if not eq:
      raise SystemExit(f"--set {item}: expected KEY=VALUE, e.g. --set steps=10")
    out[key.removeprefix("config.")] = value
  return out


def _plan_devices(args, argv, parser):
  """(host devices standing in for --gpus GPUs, memory per GPU in GB) for --plan-memory."""
  from phi1 import memory_plan
  memory_gb = args.device_memory_gb or memory_plan.DEVICE_MEMORY_GB.get(args.gpu)
  if memory_gb is None:
    parser.error(f"--plan-memory: no memory size known for --gpu {args.gpu}; "
                 "give --device-memory-gb")
  argv = sys.argv[1:] if argv is None else list(argv)
  memory_plan.ensure_host_devices(args.gpus, ["-m", "experiments.sweep", *argv])
  import jax
  return jax.devices("cpu")[:args.gpus], memory_gb


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
  p.add_argument("--plan-memory", action="store_true",
                 help="with --dry-run: compile each run's train step for --gpus host devices and "
                      "say whether it fits the GPU's memory (phi1 plan; a compile per run)")
  p.add_argument("--device-memory-gb", type=float,
                 help="memory per GPU for --plan-memory (default: --gpu's, e.g. A100 80)")
  p.add_argument("--reference-gpu-hours", type=float,
                 help="print the MFU this many GPU-hours would imply (e.g. the paper's 770)")
  p.add_argument("--eval", default="", help="after training: comma list of "
                 f"{', '.join(benchmarks.names(in_training=True))}")
  p.add_argument("--eval-limit", type=int, help="only the first N problems of each benchmark")
  p.add_argument("--eval-max-new-tokens", type=int, default=512)
  p.add_argument("--eval-export-only", action="store_true",
                 help="evaluate finetunes' final export only, not the best of their kept "
                      "checkpoints (paper §2.3 picks the best)")
  p.add_argument("--slurm", metavar="DIR", help="write sbatch scripts + submit.sh to DIR")
  p.add_argument("--status", action="store_true",
                 help="each run's Slurm jobs (squeue, or sacct) and workdir state, then exit")
  p.add_argument("--nodes", type=int, default=1)
  p.add_argument("--gpus-per-node", type=int, default=8,
                 help="0: a CPU partition (no GPU request, no --exclusive unless asked)")
  p.add_argument("--cpus-per-task", type=int, help="sbatch --cpus-per-task (default: Slurm's)")
  p.add_argument("--mem", help="sbatch --mem per node, e.g. 64G (default: Slurm's)")
  p.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None,
                 help="whole nodes (default: yes with GPUs, no on CPU partitions)")
  p.add_argument("--signal-grace", type=int, default=slurm.DEFAULT_GRACE_S, metavar="S",
                 help="USR1 this many seconds before the time limit: checkpoint and requeue")
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
  unknown = [b for b in benches if b not in benchmarks.names(in_training=True)]
  if unknown:
    p.error(f"--eval takes {', '.join(benchmarks.names(in_training=True))}, got {unknown}")
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
  if args.nodes < 1 or args.gpus_per_node < 0:
    p.error(f"--nodes must be >= 1 and --gpus-per-node >= 0, got {args.nodes}, "
            f"{args.gpus_per_node}")

  if args.status:
    print("\n".join(slurm.status_lines(runs)))
    return 0
  if args.dry_run:
    devices, memory_gb = _plan_devices(args, argv, p) if args.plan_memory else (None, None)
    dry_run(runs, gpu=args.gpu, mfu=args.mfu, gpus=args.gpus,
            reference_gpu_hours=args.reference_gpu_hours, plan_devices=devices,
            device_memory_gb=memory_gb)
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
                cpus_per_task=args.cpus_per_task, mem=args.mem, exclusive=args.exclusive,
                grace_s=args.signal_grace, extra_args=sets, eval_args=eval_args)
    return 0
  if args.compile_cache:
    import jax
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
  from phi1 import sharding
  sharding.maybe_init_distributed()  # one process per host under SLURM (see write_slurm)
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
