"""Which generation run of an output directory a command continues, or why it is refused.

Every textbooks/exercises directory records, in manifest.json `generation_runs`, the settings each
run was made with: model, prompt version, constraint table, topic tree and word list hashes, seed,
revision, generation parameters and format switches. A command whose settings equal a recorded
run's continues (tops up) that run. Any other command is refused with the changed settings listed,
because its records would be mixed with records made otherwise; `--new-run` instead records a
further run with its own settings, whose records carry `run: k` and ids of their own.
"""

import glob
import os
import re


class ProvenanceError(ValueError):
  pass


# Manifests written before `generation_runs` existed recorded only these.
_LEGACY_KEYS = ("model", "seed", "revision", "table_sha256")


def recorded_runs(meta: dict) -> list[dict]:
  if "generation_runs" in meta:
    return meta["generation_runs"]
  legacy = {k: meta[k] for k in _LEGACY_KEYS if k in meta}
  return [{"run": 0, "settings": legacy, "legacy": True}] if legacy else []


def _differences(recorded: dict, settings: dict, legacy: bool) -> dict:
  keys = recorded.keys() if legacy else recorded.keys() | settings.keys()
  return {k: (recorded.get(k), settings.get(k)) for k in sorted(keys)
          if recorded.get(k) != settings.get(k)}


def choose_run(meta: dict, settings: dict, *, new_run: bool, has_records: bool) -> tuple[int, list]:
  """(run index, the updated `generation_runs` list) for a command with `settings`."""
  runs = [dict(r) for r in recorded_runs(meta)]
  for r in runs:
    if not _differences(r["settings"], settings, r.get("legacy", False)):
      if r.pop("legacy", False):  # an old manifest: record the full settings from now on
        r["settings"] = dict(settings)
      return r["run"], runs
  if not runs and not has_records:
    return 0, [{"run": 0, "settings": dict(settings)}]
  if not new_run:
    if runs:
      latest = runs[-1]
      changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in
                          _differences(latest["settings"], settings, latest.get("legacy", False)).items())
    else:
      changes = "unrecorded"
    raise ProvenanceError(
        f"this directory's records were made with other settings ({changes}). Rerun with the "
        "recorded settings to top up, use another --out, or add --new-run to record a second run "
        f"here (its records tagged run={len(runs) or 1})")
  # Records without recorded settings are run 0: a new run never shares their ids.
  run = max((r["run"] for r in runs), default=0 if has_records else -1) + 1
  return run, runs + [{"run": run, "settings": dict(settings)}]


_RANK_DIR = re.compile(r"^rank-(\d{5})-of-(\d{5})$")


def rank_dir(out: str, rank: int, world: int) -> str:
  """Where rank I of W writes: OUT itself for W=1, else OUT/rank-IIIII-of-WWWWW."""
  return out if world == 1 else os.path.join(out, f"rank-{rank:05d}-of-{world:05d}")


def check_shard_layout(out: str, world: int):
  """Refuse to mix ranks of different world sizes in one OUT: their slot sets overlap."""
  worlds = {int(m.group(2)) for p in glob.glob(os.path.join(out, "rank-*-of-*"))
            if (m := _RANK_DIR.match(os.path.basename(p)))}
  if os.path.exists(os.path.join(out, "manifest.json")):
    worlds.add(1)
  other = worlds - {world}
  if other:
    raise ProvenanceError(f"{out} holds output of a run sharded {sorted(other)[0]} ways "
                          f"(--shard I/{sorted(other)[0]}); use that W again, or another --out")


def rank_dirs(out: str) -> list[str]:
  """OUT's rank directories in rank order, or [OUT] for an unsharded run."""
  ranks = sorted(p for p in glob.glob(os.path.join(out, "rank-*-of-*"))
                 if _RANK_DIR.match(os.path.basename(p)))
  return ranks or [out]
