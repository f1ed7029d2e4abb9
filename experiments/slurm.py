"""A sweep on Slurm: one sbatch script per run (and per evaluation), a submit.sh that queues them in
order, and the queue's view of a submitted sweep.

  write_slurm(runs, DIR, ...)   DIR/<run>.sbatch (+ <run>.eval.sbatch) and DIR/submit.sh
  status_lines(runs)            per run: its jobs' state in the queue and what its workdir holds

Jobs. A training job runs `srun python -m experiments.sweep SPEC --only RUN` (one task per node;
multi-host JAX reads the SLURM environment). A run that reads another's workdir waits for it with
`--dependency=afterok:<job>`, and `--kill-on-invalid-dep=yes` makes Slurm cancel it (reason
DependencyNeverSatisfied) when that job fails, instead of leaving it pending; the failed job's log
names the runs it takes down. With --eval, each run's evaluation is its own one-node job queued
afterok on its training (a multi-node allocation does not idle while one process evaluates).
GPU partitions get `--gpus-per-node` and `--exclusive`; with `--gpus-per-node 0` (a CPU partition)
neither is asked, and `--cpus-per-task`/`--mem` size the job.

Preemption contract. Every training job is submitted with `--requeue` and
`--signal=B:USR1@<grace>`:
  - preempted (PreemptMode=REQUEUE) or `scontrol requeue JOB`: Slurm sends SIGTERM to the job's
    processes and SIGKILL KillWait seconds later (30 s by default); the trainer finishes its step,
    saves a checkpoint and exits 0 (phi1/preemption.py), and Slurm queues the job again;
  - `<grace>` seconds before the time limit Slurm sends USR1 to the batch shell only: the shell
    forwards SIGTERM to the trainer, waits for its checkpoint, and requeues the job itself
    (`scontrol requeue $SLURM_JOB_ID`). USR1 rather than TERM tells "out of time, come back" apart
    from `scancel`, whose SIGTERM must end the job for good.
The batch shell runs srun in the background and `wait`s, so a signal reaches its trap at once
and the shell outlives the trainer's checkpoint (a shell killed first would take the step down).
On USR1 it signals the steps with `scancel --signal=TERM $SLURM_JOB_ID`, not srun: srun answers
SIGTERM by sending its tasks SIGKILL (during a requeue or preemption Slurm refuses that, as the
job is already ending, and the tasks get Slurm's own SIGTERM).
A requeued job starts its script again: the run resumes from its latest checkpoint, with the losses
of an uninterrupted run (the data iterator's position is in the checkpoint).
"""

from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import subprocess
import sys

from phi1 import run_identity
from experiments import preflight
from experiments.dry_run import estimate
from experiments.runs import Run, is_done

REPO = pathlib.Path(__file__).resolve().parents[1]
JOBS_FILE = "slurm_jobs.tsv"  # in each workdir: "<job id>\t<train|eval>" per submission
EVAL_TIME = "0-04:00:00"  # an evaluation job's limit unless --time: HumanEval + MBPP on one GPU
DEFAULT_GRACE_S = 300  # USR1 this long before the time limit: a large model's checkpoint fits in it


def slurm_time(hours: float) -> str:
  """A time limit for `hours` of estimated training: 25% margin and half an hour for compiles."""
  minutes = max(30, int(hours * 60 * 1.25) + 30)
  days, minutes = divmod(minutes, 24 * 60)
  return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def wall_hours(run: Run, *, nodes: int, gpus_per_node: int, gpu: str, mfu: float
               ) -> tuple[float, str]:
  """(hours, how) the run's training takes on its allocation: GPU-hours over the GPUs, or on a CPU
  partition the FLOPs at this host's measured rate (experiments/preflight.py) over the nodes."""
  if nodes < 1 or gpus_per_node < 0:
    raise ValueError(f"--nodes must be >= 1 and --gpus-per-node >= 0, got {nodes}, {gpus_per_node}")
  e = estimate(run, gpu, mfu)
  if gpus_per_node:
    return (e.gpu_hours / (nodes * gpus_per_node),
            f"{nodes} x {gpus_per_node} {gpu} at MFU {mfu:g}")
  seconds, peak = preflight.cpu_wall_s(e.flops)
  return (seconds / 3600 / nodes,
          f"{nodes} CPU node(s) at {peak / 1e9:.3g} GFLOP/s (this host) x MFU {preflight.CPU_MFU:g}")


def _dependents(runs: list[Run], name: str) -> list[str]:
  """Every run that (through others) needs `name`: Slurm cancels them all when it fails."""
  out, frontier = [], {name}
  for run in runs:
    if frontier & set(run.needs):
      out.append(run.name)
      frontier.add(run.name)
  return out


_WAIT_FOR_TRAINING = """\
# Preemption contract (experiments/slurm.py): SIGTERM (preemption, scontrol requeue, scancel) and
# USR1 (the time limit is near) reach the trainer as SIGTERM; it checkpoints and exits 0. Slurm
# signals the trainer itself on TERM; on USR1 `scancel --signal` passes TERM to the job's steps
# (not to srun, which would turn it into SIGKILL for its tasks).
stopping=0; requeue=0
trap 'stopping=1' TERM
trap 'requeue=1; stopping=1; scancel --signal=TERM "$SLURM_JOB_ID" || true' USR1
srun --kill-on-bad-exit=1 {run_cmd} &
child=$!
wait "$child"; status=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done  # woken by a trap
if [ "$requeue" = 1 ]; then
  echo "phi1: {name}: time limit near; checkpoint saved (exit $status), requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
if [ "$stopping" = 1 ]; then
  echo "phi1: {name}: stopped by Slurm (exit $status); a requeued job resumes from the checkpoint" >&2
  exit "$status"
fi
if [ "$status" != 0 ]; then
  echo "phi1: run {name} failed (exit $status){cancels}" >&2
  exit "$status"
fi
"""


def write_slurm(runs: list[Run], out_dir, *, spec: str, root: pathlib.Path, nodes=1,
                gpus_per_node=8, gpu="A100", mfu=0.4, partition=None, account=None, time=None,
                cpus_per_task=None, mem=None, exclusive=None, grace_s=DEFAULT_GRACE_S,
                extra_args=(), eval_args=(), log=print) -> pathlib.Path:
  """One sbatch script per run (and per evaluation) and submit.sh, which queues them with afterok
  dependencies and records each job id in the run's workdir (JOBS_FILE, read by --status).
  `exclusive` None: whole nodes when GPUs are asked for, shared CPU nodes otherwise."""
  out = pathlib.Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  path, colon, arg = spec.partition(":")  # the job starts in the repository: absolute paths
  spec = str(pathlib.Path(path).absolute()) + colon + arg
  command = [sys.executable, "-m", "experiments.sweep", spec, "--root", str(root), *extra_args]
  exclusive = bool(gpus_per_node) if exclusive is None else exclusive
  resources = [  # both jobs; the training job adds its GPUs and --exclusive
      *([f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []),
      *([f"--mem={mem}"] if mem else []),
      *([f"--partition={partition}"] if partition else []),
      *([f"--account={account}"] if account else []),
  ]
  submit = ["#!/bin/bash", "# Queues the sweep; runs already done are left out.", "set -euo pipefail",
            f"cd {shlex.quote(str(out))}", "declare -A JOB",
            "queue() {  # queue RUN WORKDIR KIND SCRIPT [SBATCH OPTIONS]: prints the job id",
            '  local id; id=$(sbatch --parsable "${@:5}" "$4"); id=${id%%;*}',
            '  mkdir -p "$2"; printf "%s\t%s\n" "$id" "$3" >> "$2/' + JOBS_FILE + '"',
            '  echo "$1 ($3): job $id" >&2; echo "$id"', "}"]
  written = 0
  for run in runs:
    if is_done(run):
      submit.append(f"# {run.name}: done already")
      continue
    hours, how = wall_hours(run, nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu, mfu=mfu)
    limit = time or slurm_time(hours)
    run_cmd = shlex.join(command + ["--only", run.name, "--no-progress"])
    dependents = _dependents(runs, run.name)
    cancels = (f"; Slurm cancels the runs that need it (--kill-on-invalid-dep): "
               f"{', '.join(dependents)}" if dependents else "")
    header = ["#!/bin/bash", f"#SBATCH --job-name=phi1-{run.name}",
              f"#SBATCH --output={run.workdir}/slurm-%j.out", "#SBATCH --open-mode=append",
              *(f"#SBATCH {r}" for r in resources)]
    lines = [
        *header,
        *([f"#SBATCH --gpus-per-node={gpus_per_node}"] if gpus_per_node else []),
        *(["#SBATCH --exclusive"] if exclusive else []),
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",  # one JAX process per host drives all its devices
        f"#SBATCH --time={limit}",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{grace_s}",
        "#SBATCH --kill-on-invalid-dep=yes",
        f"# estimate: {hours:,.3g} h on {how}",
        "set -uo pipefail",
        f"cd {shlex.quote(str(REPO))}",
        # jax.distributed.initialize() takes process id/count and the coordinator (first node of
        # the step) from SLURM_*; phi1 picks that up when SLURM_NTASKS > 1.
        "export JAX_COORDINATOR_PORT=${JAX_COORDINATOR_PORT:-$((20000 + SLURM_JOB_ID % 20000))}",
        _WAIT_FOR_TRAINING.replace("{run_cmd}", run_cmd).replace("{name}", run.name)
        .replace("{cancels}", cancels),
    ]
    script = out / f"{run.name}.sbatch"
    script.write_text("\n".join(lines))
    written += 1
    submit.append('DEPS=""')  # afterok:ID:ID... over the needed runs queued by this script
    submit += [f'DEPS+="${{JOB[{n}]:+:${{JOB[{n}]}}}}"' for n in run.needs]
    workdir = shlex.quote(str(run.workdir))
    submit.append(f"JOB[{run.name}]=$(queue {run.name} {workdir} train "
                  f"{shlex.quote(script.name)} ${{DEPS:+--dependency=afterok$DEPS}})")
    if eval_args:
      eval_cmd = shlex.join(command + ["--only", run.name, "--no-progress", *eval_args])
      eval_lines = [*header, *(["#SBATCH --gpus-per-node=1"] if gpus_per_node else []),
                    "#SBATCH --nodes=1", "#SBATCH --ntasks=1",
                    f"#SBATCH --time={time or EVAL_TIME}", "#SBATCH --kill-on-invalid-dep=yes",
                    "set -euo pipefail",
                    f"cd {shlex.quote(str(REPO))}", f"exec {eval_cmd}"]
      eval_script = out / f"{run.name}.eval.sbatch"
      eval_script.write_text("\n".join(eval_lines) + "\n")
      written += 1
      submit.append(f"queue {run.name} {workdir} eval {shlex.quote(eval_script.name)} "
                    f"--job-name=phi1-{run.name}-eval --dependency=afterok:${{JOB[{run.name}]}} "
                    ">/dev/null")
  path = out / "submit.sh"
  path.write_text("\n".join(submit) + "\n")
  path.chmod(0o755)
  log(f"wrote {written} sbatch script(s) and {path}; run: bash {path}")
  return path


# ------------------------------------------------------------------------------------------ status
def status_lines(runs: list[Run]) -> list[str]:
  """One line per run: its last jobs' states in the queue (squeue; sacct for jobs squeue has
  forgotten, where accounting is on) and its workdir (DONE, the step reached, the log's last line)."""
  recorded = {run.name: _recorded_jobs(run.workdir) for run in runs}
  ids = [job for jobs in recorded.values() for job in jobs.values()]
  states = _queue_states(ids) if ids else {}
  width = max(len(run.name) for run in runs)
  lines = []
  for run in runs:
    jobs = recorded[run.name]
    queue = "; ".join(f"{kind} job {job} {states.get(job, 'not in the queue')}"
                      for kind, job in jobs.items()) or "not submitted"
    lines.append(f"{run.name:<{width}}  {queue}  |  {_workdir_state(run, states, jobs)}  "
                 f"({run.workdir})")
  return lines


def _recorded_jobs(workdir: pathlib.Path) -> dict[str, str]:
  """{kind: the last job id submit.sh recorded for it} ("train", "eval")."""
  path = workdir / JOBS_FILE
  jobs = {}
  for line in path.read_text().splitlines() if path.is_file() else []:
    job, _, kind = line.partition("\t")
    if job.strip():
      jobs[kind.strip() or "train"] = job.strip()
  return jobs


def _queue_states(ids: list[str]) -> dict[str, str]:
  """{job id: "STATE (reason)"} from squeue (the jobs slurmctld still holds), then sacct."""
  states = {}
  if shutil.which("squeue"):
    out = _slurm(["squeue", "-h", "--states=all", "-o", "%i|%T|%r"])
    for line in out.splitlines():
      job, state, reason = (line.split("|") + ["", ""])[:3]
      if job in ids:
        states[job] = state + (f" ({reason})" if reason not in ("", "None") else "")
  else:
    return {job: "(squeue not found)" for job in ids}
  missing = [job for job in ids if job not in states]
  if missing and shutil.which("sacct"):  # empty where accounting is off (AccountingStorageType)
    out = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State,ExitCode"])
    for line in out.splitlines():
      job, state, code = (line.split("|") + ["", ""])[:3]
      if job in missing:
        states[job] = f"{state} (exit {code})" if code and code != "0:0" else state
  return states


def _slurm(argv: list[str]) -> str:
  try:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return ""
  return out.stdout if out.returncode == 0 else ""


def _workdir_state(run: Run, states: dict, jobs: dict) -> str:
  if is_done(run):
    done_path = run.workdir / run_identity.DONE
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}  # or a final checkpoint
    return f"DONE (step {done.get('steps', run.config.steps)})"
  step = _last_step(run.workdir)
  text = f"step {step} of {run.config.steps}" if step else "not started"
  checkpoint = run_identity.latest_step(run.workdir) if (run.workdir / "checkpoints").is_dir() \
      else None
  if checkpoint:
    text += f", checkpoint at step {checkpoint}"
  active = any(states.get(job, "").split(" ")[0] in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING",
                                                     "COMPLETING", "SUSPENDED")
               for job in jobs.values())
  last = _last_log_line(run.workdir)
  if jobs and not active and last:
    text += f"; failed or stopped: {last}"
  return text


def _last_step(workdir: pathlib.Path) -> int:
  path = workdir / "metrics.jsonl"
  step = 0
  for line in path.read_text().splitlines() if path.is_file() else []:
    try:
      step = max(step, int(json.loads(line).get("step", 0)))
    except (ValueError, AttributeError):  # a line cut off by a kill
      continue
  return step


def _last_log_line(workdir: pathlib.Path) -> str:
  logs = sorted(workdir.glob("slurm-*.out"), key=lambda p: p.stat().st_mtime)
  for path in reversed(logs):
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if lines:
      return lines[-1][:200]
  return ""
