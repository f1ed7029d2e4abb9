"""Where training numbers go: metrics.jsonl (the contract), TensorBoard, optional W&B, a loss plot.

Only process 0 writes. `metrics.jsonl` is appended line by line and flushed, so a killed run keeps
every logged step; on resume, lines past the restored step are dropped first so the file reads as
one uninterrupted run.
"""

import json
import pathlib
import secrets

import jax


class MetricsWriter:

  def __init__(self, workdir, *, resume_step: int = 0, wandb_project: str = "", config=None):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = self._wandb = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._truncate_after(resume_step)
    self._file = self.path.open("a")
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=resume_step + 1)
    if wandb_project:
      import wandb  # optional dependency
      # One W&B run per workdir: the id is kept beside the checkpoints so a resumed (or
      # preempted and requeued) job appends to the same run instead of starting a new one.
      # Steps W&B saw past the restored checkpoint stay there; metrics.jsonl is the record.
      id_file = pathlib.Path(workdir) / "wandb_run_id"
      if not id_file.exists():
        id_file.write_text(secrets.token_hex(4))
      self._wandb = wandb.init(project=wandb_project, dir=str(workdir),
                               id=id_file.read_text().strip(), resume="allow",
                               config=config.to_dict() if config is not None else None)

  def _truncate_after(self, step: int):
    if not self.path.exists():
      return
    kept = [line for line in self.path.read_text().splitlines()
            if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
    self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)
    if self._wandb is not None:
      self._wandb.log(record, step=step)

  def close(self):
    if not self.enabled:
      return
    self._file.close()
    self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def _step_of(line: str):
  try:
    return json.loads(line).get("step")
  except json.JSONDecodeError:
    return None  # a line cut by a kill mid-write


def _plain(value):
  if hasattr(value, "item"):
    return value.item()
  return value


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(workdir, out_name: str = "loss.png"):
  """Train (and eval, where logged) loss against step, as a PNG in the workdir."""
  from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
  records = read_metrics(workdir)
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for key, label in (("loss", "train"), ("eval_loss", "eval")):
    points = [(r["step"], r[key]) for r in records if key in r]
    if points:
      ax.plot(*zip(*points), label=label, marker="." if key == "eval_loss" else None)
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats/token)")
  ax.set_yscale("log")
  ax.legend()
  ax.grid(alpha=0.3)
  out = pathlib.Path(workdir) / out_name
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  return out
