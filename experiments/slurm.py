"""A sweep on Slurm: one sbatch script per run and a submit.sh that queues them in order.

  write_slurm(runs, DIR, ...)   DIR/<run>.sbatch and DIR/submit.sh (afterok dependencies)
"""

from __future__ import annotations

import pathlib
import shlex
import sys

from experiments.dry_run import estimate
from experiments.runs import Run, is_done

REPO = pathlib.Path(__file__).resolve().parents[1]


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

