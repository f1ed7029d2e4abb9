"""Runs data_gen's corpus stages on HF datatrove, the engine FineWeb was built with: one pipeline
definition runs embedded on a laptop and unchanged on Slurm or Ray.

A stage is a list of `Step`s: a datatrove pipeline (PipelineSteps reading and writing record shards)
with its number of tasks. `run` hands them, in order, to one of datatrove's executors:
  local  LocalPipelineExecutor, `--workers` processes on this machine (the default);
  slurm  SlurmPipelineExecutor: one job array per step, each submitted with
         `--dependency=afterok:<previous job>` and `--kill-on-invalid-dep=yes` (a failed task
         cancels the steps after it); the command returns once everything is queued;
  ray    RayPipelineExecutor on the cluster at `--ray-address` (a local Ray if none).
Each step keeps datatrove's logs, stats and completion markers in `<stage dir>/_engine/<step>/`:
rerunning a command skips every finished task, so a kill costs at most the tasks that were running.
A stage refuses to resume with settings other than those its finished tasks ran with.
The console stays quiet (locally): datatrove's own lines go to `<stage dir>/_engine/logs/` and each
task's to `_engine/<step>/logs/task_NNNNN.log`; a failed step raises `StageFailed` with the failing
task's last log lines and the log's path. Every task records its peak resident memory
(`peak_memory_mb`: the figure to size a Slurm `--mem-per-cpu-gb` by).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import pathlib
import shutil
import sys
from typing import Callable, Sequence

from phi1 import atomic

try:
  from datatrove.pipeline.base import PipelineStep
except ImportError:  # require_datatrove() names the pip command before any step is built
  PipelineStep = object

EXECUTORS = ("local", "slurm", "ray")
_DATATROVE_PIP = "pip install 'datatrove==0.10.1' 'xxhash>=3.5,<4'"
_RAY_PIP = "pip install 'phi1[ray]' (or: pip install 'ray>=2.60,<3')"


class SettingsChanged(ValueError):
  pass


class StageFailed(RuntimeError):
  pass


@dataclasses.dataclass
class EngineConfig:
  executor: str = "local"
  tasks: int = max(1, os.cpu_count() or 1)   # shards (one per task) of every sharded step
  workers: int = -1                          # tasks running at once; -1: all (local: capped by cores)
  # Slurm
  partition: str | None = None
  time: str = "24:00:00"
  cpus_per_task: int = 1
  mem_per_cpu_gb: float = 2
  job_name: str = "data_gen"
  slurm_env: str | None = None               # shell line run before each task (default: this venv)
  gpus_per_task: int = 0                     # for the steps that embed (Slurm --gpus-per-task;
                                             # locally each task is pinned to its own GPUs)
  # Ray
  ray_address: str | None = None

  def __post_init__(self):
    if self.executor not in EXECUTORS:
      raise ValueError(f"--executor must be one of {EXECUTORS}, got {self.executor!r}")
    if self.tasks < 1:
      raise ValueError(f"--tasks must be >= 1, got {self.tasks}")
    if self.workers == 0 or self.workers < -1:
      raise ValueError(f"--workers must be >= 1 (or -1 for all tasks at once), got {self.workers}")
    if self.executor == "slurm" and not self.partition:
      raise ValueError("--executor slurm needs --slurm-partition NAME")
    if self.gpus_per_task < 0:
      raise ValueError(f"--gpus-per-task must be >= 0, got {self.gpus_per_task}")


@dataclasses.dataclass
class Step:
  """One datatrove pipeline: `pipeline` runs once per task (rank 0..tasks-1). `quiet=False` keeps
  the console for a step that reports as it goes (the LLM labelling's cost)."""
  name: str
  pipeline: list
  tasks: int = 1
  quiet: bool = True
  gpu: bool = False   # runs a model: gets `gpus_per_task` GPUs (the other steps get none)


def add_args(parser: argparse.ArgumentParser) -> None:
  d = EngineConfig()
  g = parser.add_argument_group("engine (datatrove)")
  g.add_argument("--executor", choices=EXECUTORS, default=d.executor)
  g.add_argument("--tasks", type=int, default=d.tasks, help="tasks (= output shards) per stage")
  g.add_argument("--workers", type=int, default=d.workers,
                 help="tasks run at once (-1: all; local: at most the cores)")
  g.add_argument("--slurm-partition", default=None)
  g.add_argument("--slurm-time", default=d.time, help="per task, e.g. 24:00:00")
  g.add_argument("--cpus-per-task", type=int, default=d.cpus_per_task, help="Slurm and Ray")
  g.add_argument("--mem-per-cpu-gb", type=float, default=d.mem_per_cpu_gb, help="Slurm and Ray")
  g.add_argument("--slurm-job-name", default=d.job_name)
  g.add_argument("--slurm-env", default=None,
                 help="shell line that makes the Python environment in a job (default: activate "
                      "this venv)")
  g.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
  g.add_argument("--gpus-per-task", type=int, default=d.gpus_per_task,
                 help="GPUs for each task of the steps that run a model (embed, score, an "
                      "embedding decontamination scan): Slurm requests them; locally each task "
                      "sees its own (CUDA_VISIBLE_DEVICES)")


def from_args(args: argparse.Namespace) -> EngineConfig:
  return EngineConfig(executor=args.executor, tasks=args.tasks, workers=args.workers,
                      partition=args.slurm_partition, time=args.slurm_time,
                      cpus_per_task=args.cpus_per_task, mem_per_cpu_gb=args.mem_per_cpu_gb,
                      job_name=args.slurm_job_name, slurm_env=args.slurm_env,
                      ray_address=args.ray_address, gpus_per_task=args.gpus_per_task)


def require_datatrove():
  try:
    import datatrove  # noqa: F401
    import xxhash  # noqa: F401  (datatrove's dedup hashes)
  except ImportError as e:
    raise ImportError(f"data_gen's corpus stages run on datatrove, which is not installed "
                      f"({e}); {_DATATROVE_PIP}") from None


# --------------------------------------------------------------------------------------- settings
def check_settings(stage_dir: str | os.PathLike, settings: dict) -> None:
  """Records `settings` for the stage in `stage_dir`; refuses if finished tasks used others."""
  stage_dir = pathlib.Path(stage_dir)
  path = stage_dir / "_engine" / "settings.json"
  settings = json.loads(json.dumps(settings, default=str))
  if path.exists():
    before = json.loads(path.read_text())
    if before != settings and any((stage_dir / "_engine").glob("*/completions/*")):
      changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
      what = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
      raise SettingsChanged(
          f"{stage_dir} has tasks finished with other settings ({what}); rerun with the earlier "
          f"settings to finish it, or delete {stage_dir} (or use another output directory) to "
          "start over with the new ones")
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic.write_json(path, settings, indent=1, sort_keys=True)


def is_finished(stage_dir: str | os.PathLike, steps: Sequence[Step]) -> bool:
  root = pathlib.Path(stage_dir) / "_engine"
  return all(len(list((root / s.name / "completions").glob("*"))) >= s.tasks for s in steps)


def reset(stage_dir: str | os.PathLike) -> None:
  """Deletes a stage's outputs and markers (its settings changed after it finished)."""
  shutil.rmtree(stage_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ running
def run(stage_dir: str | os.PathLike, steps: Sequence[Step], config: EngineConfig,
        depends=None, log: Callable[[str], None] | None = None):
  """Runs `steps` in order. local/ray: returns once they are done (raises StageFailed naming the
  failed tasks' logs). slurm: submits them chained and returns the last step's executor, which a
  later stage passes as `depends`."""
  require_datatrove()
  log = log or (lambda m: print(m, file=sys.stderr))
  root = pathlib.Path(stage_dir) / "_engine"
  previous = depends
  for step in steps:
    first = [PinGpus(config.gpus_per_task)] if step.gpu and config.executor == "local" else []
    step = dataclasses.replace(step, pipeline=[*first, *step.pipeline, PeakMemory()])
    executor = _executor(step, root / step.name, config, previous)
    if config.executor == "slurm":
      previous = executor
      continue
    if config.executor == "ray":
      _ray_init(config)
    incomplete = executor.get_incomplete_ranks()
    if incomplete:
      try:
        with _caller_heap_frozen(), _quiet(root, step):
          executor.run()
      except (ValueError, FileNotFoundError):
        raise   # a setting or an input to fix: its own one-line message says which
      except Exception as e:  # a task crashed: its log says where
        raise StageFailed(_failure(root / step.name, step.name,
                                   executor.get_incomplete_ranks())) from e
      incomplete = executor.get_incomplete_ranks()
      if incomplete:
        raise StageFailed(_failure(root / step.name, step.name, incomplete))
  if config.executor == "slurm" and previous is not depends:
    previous.run()  # submits the chain: each executor first submits what it depends on
    log(f"submitted {len(steps)} Slurm job arrays for {stage_dir} (last job {previous.job_id})")
  return previous


@contextlib.contextmanager
def _quiet(root: pathlib.Path, step: Step):
  """datatrove's console lines (the executor's, and the tasks' own, which fork with this
  process's stderr) go to `root/logs/<step>.log`; the task logs keep everything."""
  if not step.quiet:
    yield
    return
  from datatrove.utils.logging import logger
  (root / "logs").mkdir(parents=True, exist_ok=True)
  with open(root / "logs" / f"{step.name}.log", "a") as log, contextlib.redirect_stderr(log):
    logger.remove()
    logger.add(log, level="INFO")
    try:
      yield
    finally:
      logger.remove()   # an in-process task replaces the sinks too
      logger.add(sys.stderr, level="WARNING")


def _failure(step_dir: pathlib.Path, name: str, incomplete: list[int], lines: int = 12) -> str:
  """What a failed step says: which tasks, the failing task's last log lines, where the logs
  are (the failing task: the first unfinished one whose log holds an error)."""
  logs = [step_dir / "logs" / f"task_{r:05d}.log" for r in incomplete]
  texts = {log: log.read_text(errors="replace") for log in logs if log.exists()}
  log = next((l for l, t in texts.items() if "Traceback" in t or "| ERROR" in t),
             next(iter(texts), None))
  tail = ""
  if log is not None:
    tail = "\n".join(texts[log].splitlines()[-lines:])
    tail = f"; the last lines of {log}:\n{tail}"
  return (f"{name}: tasks {incomplete[:10]} did not finish (logs in {step_dir / 'logs'}); rerun "
          f"the same command to retry them{tail}")


def visible_gpus(rank: int, gpus_per_task: int, gpus: Sequence[str]) -> str:
  """CUDA_VISIBLE_DEVICES for local task `rank`: its own `gpus_per_task` of the machine's `gpus`
  (tasks running at once get distinct ones while there are enough)."""
  return ",".join(gpus[(rank * gpus_per_task + i) % len(gpus)] for i in range(gpus_per_task))


class PinGpus(PipelineStep):
  """First step of a local model step: before the task loads JAX, restricts it to its GPUs
  (`visible_gpus` of CUDA_VISIBLE_DEVICES, or of `nvidia-smi -L`'s list). No GPUs: nothing."""
  type = "data_gen"
  name = "pin gpus"

  def __init__(self, gpus_per_task: int):
    super().__init__()
    self.gpus_per_task = gpus_per_task

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    """Runs when the pipeline is put together, before any later step starts (not a generator:
    a reading step after it never iterates its input)."""
    if self.gpus_per_task and "jax" not in sys.modules:
      gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
      if not gpus and shutil.which("nvidia-smi"):
        import subprocess
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        gpus = [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU")]
      if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus(rank, self.gpus_per_task, gpus)
    return data if data is not None else iter(())


class PeakMemory(PipelineStep):
  """Last step of every pipeline: the task's peak resident memory, in MB (ru_maxrss)."""
  type = "data_gen"
  name = "peak memory"

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    import resource
    for doc in data or ():
      yield doc
    self.stat_update("peak_memory_mb",
                     value=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


@contextlib.contextmanager
def _caller_heap_frozen():
  """The objects alive before a step (a notebook's or a bench's heap) move out of the collector's
  sight while it runs (`gc.freeze`, as Python's docs advise before forking): the step's own
  collections stop re-scanning them, and forked workers stop copying their pages by touching
  them. Measured on 2,000 files with 3M objects alive in the caller: ingest 8.9 -> 6.3 s in-process
  and 5.1 -> 3.6 s on 2 forked workers. Unfrozen afterwards, so they can be collected again."""
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()


def _executor(step: Step, logging_dir: pathlib.Path, config: EngineConfig, depends):
  common = dict(pipeline=step.pipeline, tasks=step.tasks, logging_dir=str(logging_dir))
  if config.executor == "local":
    from datatrove.executor import LocalPipelineExecutor
    cores = max(1, os.cpu_count() or 1)
    workers = min(step.tasks, cores if config.workers == -1 else config.workers)
    return LocalPipelineExecutor(**common, workers=workers, start_method=_start_method())
  if config.executor == "ray":
    try:
      from datatrove.executor.ray import RayPipelineExecutor
      import ray  # noqa: F401
    except ImportError:
      raise ImportError(f"--executor ray needs Ray: {_RAY_PIP}") from None
    return RayPipelineExecutor(**common, workers=config.workers, cpus_per_task=config.cpus_per_task,
                               mem_per_cpu_gb=config.mem_per_cpu_gb)
  from datatrove.executor.slurm import SlurmPipelineExecutor
  return SlurmPipelineExecutor(
      **common, workers=config.workers, time=config.time, partition=config.partition,
      cpus_per_task=config.cpus_per_task, mem_per_cpu_gb=config.mem_per_cpu_gb,
      gpus_per_task=config.gpus_per_task if step.gpu else 0,
      job_name=f"{config.job_name}-{step.name}", env_command=config.slurm_env or _venv_line(),
      depends=depends, qos=None,
      # sbatch refuses a fractional size ("1.5G", datatrove's f"{gb}G"): whole megabytes instead.
      # A failed or cancelled task cancels the steps after it (rather than leaving them pending
      # forever); rerunning the command queues them again.
      sbatch_args={"mem-per-cpu": f"{math.ceil(config.mem_per_cpu_gb * 1024)}M",
                   "kill-on-invalid-dep": "yes"})


def _start_method() -> str:
  """`fork` where it is safe (fast start, nothing pickled); `forkserver` once JAX is loaded:
  forking a multithreaded process can deadlock the child."""
  import multiprocessing
  if "jax" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
    return "forkserver"
  return "fork"


def _venv_line() -> str:
  activate = pathlib.Path(sys.prefix) / "bin" / "activate"
  return f"source {activate}" if activate.exists() else ""


def _ray_init(config: EngineConfig) -> None:
  import ray
  if not ray.is_initialized():
    ray.init(address=config.ray_address, log_to_driver=False)


# ----------------------------------------------------------------------------------------- stats
def peak_memory_mb(stage_dir: str | os.PathLike) -> dict[str, float]:
  """{step: the largest peak resident memory of one of its tasks, MB}. A task forked from a
  larger process starts at that process's size (Linux copies the high-water mark)."""
  out = {}
  for path in sorted((pathlib.Path(stage_dir) / "_engine").glob("*/stats/*.json")):
    for block in json.loads(path.read_text()):
      value = block.get("stats", {}).get("peak_memory_mb")
      if value is not None:
        peak = value.get("max", value.get("total", 0)) if isinstance(value, dict) else value
        step = path.parent.parent.name
        out[step] = round(max(out.get(step, 0.0), float(peak)), 1)
  return out


def step_stats(stage_dir: str | os.PathLike, step: str) -> dict[str, dict[str, float]]:
  """{pipeline step name: {stat label: total}} summed over the step's finished tasks."""
  out: dict[str, dict[str, float]] = {}
  for path in sorted((pathlib.Path(stage_dir) / "_engine" / step / "stats").glob("*.json")):
    for block in json.loads(path.read_text()):
      counts = out.setdefault(block["name"], {})
      for label, value in block.get("stats", {}).items():
        total = value.get("total", 0) if isinstance(value, dict) else value
        counts[label] = counts.get(label, 0) + total
  return out
