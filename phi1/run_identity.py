"""Which config a workdir's checkpoints were made with, and what a rerun may change.

Every run records its config and config hash in WORKDIR/identity.json, with a history of the
events that changed them. A rerun in a workdir whose checkpoints came from a different config is
refused with the changed keys listed (resuming would mix two runs under one name), unless it says
  on_change="restart"   start over; the old run's files move to WORKDIR/superseded/TIME/, or
  on_change="continue"  continue from the latest checkpoint with the new config (recorded).
What the run reads is part of its identity too: the content fingerprint (phi1/fingerprint.py) of
every data source, eval source, the tokenizer and the weights it starts from (init_from). A
topped-up or edited corpus is a change like a config key's, named in the refusal ("data source
'textbooks' (data/textbooks) changed").
Two changes are always allowed and recorded: a different `steps` (extending a run, or stopping it
earlier when no checkpoint is past the new end) when the LR schedule has its own length
(optimizer.schedule_steps > 0), and bookkeeping keys that do not change the weights a step
computes (logging, eval and checkpoint cadence, W&B). Under schedule_steps=0 the schedule follows
`steps`, so a new `steps` re-stretches the LR of every step: a change ("LR schedule: 30 steps ->
45 steps"); setting schedule_steps to the old length keeps the schedule and extends the run.

A run is *done* when its DONE marker (experiments/sweep.py) carries the hash of the config the
workdir now holds and its data still has the fingerprints the run trained on; a DONE for any other
hash is stale. The sweep, its dry run and the registry all
use `is_done` / `done_status` below.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import shutil

from phi1 import atomic, fingerprint

IDENTITY = "identity.json"
DONE = "DONE"
# Keys that decide when things are logged, evaluated or saved, or how fast data is read, not what
# a training step computes (every top-level `eval_*` key too: evals only read the weights).
BOOKKEEPING = ("log_every", "checkpoint_every", "checkpoint_every_minutes", "keep_last",
               "keep_every", "wandb_project", "data.cache_dir", "data.read_threads",
               "data.prefetch_batches", "profile_steps")


def is_bookkeeping(key: str) -> bool:
  return key in BOOKKEEPING or key.startswith(("eval_", "evals."))
ON_CHANGE = ("refuse", "restart", "continue")
# Keys that change the parameters' shapes: a checkpoint cannot continue under them.
SHAPE_KEYS = ("model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads",
              "model.d_ff", "model.attn_bias")
# What a restart moves aside: everything a run writes about its own progress.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "export", "loss.png", DONE)
# ... and every evaluation of its weights (eval_humaneval/, eval_mbpp/, ...).
EVAL_OUTPUTS = "eval_*"


class ConfigChanged(ValueError):
  """The workdir's checkpoints were made with a different config."""


def _plain(config) -> dict:
  """The config as JSON-able nested dicts (tuples -> lists), as config.json stores it."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(tree, sort_keys=True, default=str))


def config_hash(config) -> str:
  """12 hex digits identifying everything the trainer reads (the config's canonical JSON)."""
  text = json.dumps(config.to_dict() if hasattr(config, "to_dict") else config, sort_keys=True,
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def diff(before: dict, after: dict) -> dict:
  """{dotted key: (old, new)} over two flattened configs; a key only one side has shows None."""
  a, b = flatten(before), flatten(after)
  return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def describe(changes: dict) -> str:
  return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def kept_steps(workdir) -> list[int]:
  """The complete training checkpoints in a workdir (orbax writes each step under a temporary
  name and renames it when complete): a directory listing, no JAX."""
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def latest_step(workdir) -> int | None:
  return max(kept_steps(workdir), default=None)


def read(workdir) -> dict:
  """identity.json, or for a workdir from before it existed, its config.json as the record."""
  workdir = pathlib.Path(workdir)
  try:
    return json.loads((workdir / IDENTITY).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    pass
  try:
    config = json.loads((workdir / "config.json").read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}
  return {"config": config, "config_hash": config_hash(config), "history": []}


class Comparison:
  """The rerun's config against the workdir's record."""

  def __init__(self, workdir, config):
    self.workdir = pathlib.Path(workdir)
    self.record = read(workdir)
    self.latest = latest_step(workdir)
    self.new = _plain(config)
    everything = diff(self.record["config"], self.new) if self.record else {}
    self.steps = everything.pop("steps", None)
    everything.pop("optimizer.schedule_steps", None)
    # (old, new) length of the LR schedule when it differs (compared as the schedule it makes).
    lengths = (schedule_length(self.record.get("config") or {}), schedule_length(self.new))
    self.schedule = lengths if self.record and None not in lengths and len(set(lengths)) == 2 \
        else None
    # Inputs whose content changed: compared when the record has their fingerprints.
    self.data = inputs(self.new)
    self.data_changes = (fingerprint.changed(self.record["data"], self.data)
                         if "data" in self.record else {})
    self.bookkeeping = {k: v for k, v in everything.items() if is_bookkeeping(k)}
    self.changes = {k: v for k, v in everything.items() if not is_bookkeeping(k)}
    # Checkpoints past the new end would be exported as if they were the end: refuse.
    self.past_end = (self.latest is not None and self.latest > int(self.new["steps"]))

  @property
  def has_checkpoints(self) -> bool:
    return self.latest is not None

  @property
  def changed(self) -> bool:
    """Training on would compute other weights than the recorded run (config, schedule, data)."""
    return bool(self.changes or self.schedule or self.data_changes)

  @property
  def conflicts(self) -> bool:
    return self.has_checkpoints and (self.changed or self.past_end)

  def describe_changes(self) -> str:
    what = [describe(self.changes)] if self.changes else []
    if self.schedule:
      what.append(f"LR schedule: {self.schedule[0]} steps -> {self.schedule[1]} steps")
    what += [f"{k} changed (fingerprint {old} -> {new})"
             for k, (old, new) in self.data_changes.items()]
    return ", ".join(what)

  def message(self) -> str:
    what = []
    if self.changed:
      what.append(f"changed: {self.describe_changes()}")
    if self.past_end:
      what.append(f"steps={self.new['steps']} but a checkpoint at step {self.latest} exists "
                  f"(evaluate it with `phi1 eval --checkpoint {self.workdir} --step N`)")
    return (f"{self.workdir} holds checkpoints up to step {self.latest} made with a different "
            f"config or data ({'; '.join(what)}). Rerun with --restart to start over (the old run "
            f"moves to {self.workdir}/superseded/), or --continue-with-changes to continue from "
            f"step {self.latest} with the new config (recorded in {self.workdir / IDENTITY}), or "
            "use another --workdir")


def inputs(config: dict) -> dict[str, str]:
  """{what: content fingerprint} of everything a run reads besides its config: the data block's
  sources and tokenizer, and the weights it starts from (init_from)."""
  found = fingerprint.of_data(config.get("data") or {})
  if config.get("init_from"):
    found[f"init_from ({config['init_from']})"] = fingerprint.of_weights(config["init_from"])
  return found


def schedule_length(config: dict) -> int | None:
  """How many steps the LR schedule spans (phi1/train.py's make_schedule)."""
  try:
    return int(config["optimizer"]["schedule_steps"]) or int(config["steps"])
  except (KeyError, TypeError):
    return None


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_and_record(workdir, config, *, on_change: str = "refuse", primary: bool = True
                     ) -> list[dict]:
  """Refuse (ConfigChanged) or accept the rerun; record what happened. Returns the new events.

  `primary`: this process writes (the others of a multi-host run only check)."""
  if on_change not in ON_CHANGE:
    raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
  workdir = pathlib.Path(workdir)
  cmp = Comparison(workdir, config)
  if cmp.conflicts and on_change == "refuse":
    raise ConfigChanged(cmp.message())
  reshaped = {k: v for k, v in cmp.changes.items() if k in SHAPE_KEYS}
  if cmp.has_checkpoints and reshaped and on_change == "continue":
    raise ConfigChanged(f"{workdir}'s checkpoints cannot continue with a different architecture "
                        f"({describe(reshaped)}): rerun with --restart or use another --workdir")
  history = list(cmp.record.get("history", []))
  new_hash = config_hash(config)
  events = []
  if not cmp.record or not history:
    events.append(dict(event="start", config_hash=new_hash))
  if cmp.conflicts and on_change == "restart":
    moved = workdir / "superseded" / _now().replace(":", "")
    events.append(dict(event="restart", moved_to=str(moved), previous_hash=cmp.record.get(
        "config_hash"), at_step=cmp.latest, changes=cmp.changes))
    if primary:
      moved.mkdir(parents=True, exist_ok=True)
      for name in RUN_OUTPUTS:
        if (workdir / name).exists():
          shutil.move(str(workdir / name), str(moved / name))
      for evaluation in workdir.glob(EVAL_OUTPUTS):  # scores of the superseded weights
        shutil.move(str(evaluation), str(moved / evaluation.name))
  elif cmp.has_checkpoints and cmp.changed:
    events.append(dict(event="continue_with_changes", at_step=cmp.latest, changes=cmp.changes,
                       **({"schedule": list(cmp.schedule)} if cmp.schedule else {}),
                       **({"data": cmp.data_changes} if cmp.data_changes else {})))
    if primary:
      print(f"{workdir}: continuing from step {cmp.latest} with changes: "
            f"{cmp.describe_changes()}", flush=True)
  if cmp.steps and cmp.record and on_change != "restart":
    events.append(dict(event="steps_changed", at_step=cmp.latest, steps=list(cmp.steps)))
  if cmp.bookkeeping and cmp.record:
    events.append(dict(event="bookkeeping_changed", at_step=cmp.latest, changes=cmp.bookkeeping))
  for e in events:
    e.setdefault("config_hash", new_hash)
    e["time"] = _now()
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"config_hash": new_hash, "config": cmp.new, "data": cmp.data,
              "history": history + json.loads(json.dumps(events, default=str))}
    atomic.write_json(workdir / IDENTITY, record, indent=2, default=str)
  return events


def done_status(workdir) -> str:
  """"done" (DONE matches the workdir's current config), "stale" (a DONE for another config),
  or "" (no DONE)."""
  workdir = pathlib.Path(workdir)
  try:
    marker = json.loads((workdir / DONE).read_text())
  except FileNotFoundError:
    return ""
  except json.JSONDecodeError:
    return "stale"
  current = recorded_hash(workdir)
  return "done" if current is None or marker.get("config_hash") == current else "stale"


def is_done(workdir, config) -> bool:
  """This config's run finished here: a DONE for its hash, which is also the workdir's current
  config; or (a run trained with `phi1 train`) that config's final checkpoint."""
  workdir = pathlib.Path(workdir)
  wanted = config_hash(config)
  if recorded_hash(workdir) not in (None, wanted):
    return False
  trained_on = read(workdir).get("data")
  if trained_on is not None and fingerprint.changed(trained_on, inputs(_plain(config))):
    return False  # its data changed since: the run is to be redone, not skipped
  if (workdir / DONE).is_file():
    return _done_hash(workdir) == wanted
  # Orbax renames a step's directory into place only when it is complete.
  return read(workdir).get("config_hash") == wanted and (
      workdir / "checkpoints" / str(config["steps"])).is_dir()


def recorded_hash(workdir) -> str | None:
  """The hash identity.json records (None for a workdir from before identity.json)."""
  try:
    return json.loads((pathlib.Path(workdir) / IDENTITY).read_text()).get("config_hash")
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _done_hash(workdir) -> str | None:
  try:
    return json.loads((pathlib.Path(workdir) / DONE).read_text()).get("config_hash")
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def status(workdir, config) -> str:
  """One line for a dry run: done / to run / resumes / stale / refused, and why."""
  workdir = pathlib.Path(workdir)
  if is_done(workdir, config):
    return "done"
  cmp = Comparison(workdir, config)
  stale = " (its DONE is stale: made with another config)" if (workdir / DONE).is_file() else ""
  if cmp.conflicts:
    source = "other data" if cmp.data_changes and not (cmp.changes or cmp.schedule) else \
        "another config"
    return (f"STALE: checkpoints up to step {cmp.latest} come from {source} "
            f"({cmp.describe_changes() or 'a checkpoint past the new steps'}); training needs "
            "--restart or --continue-with-changes")
  if cmp.has_checkpoints:
    extra = f"; steps {cmp.steps[0]} -> {cmp.steps[1]}" if cmp.steps else ""
    return f"resumes from step {cmp.latest}{extra}{stale}"
  return "to run" + stale
