"""Sweep-building helpers for experiment files: `grid` (a cartesian product of config values, with
names that tell runs apart) and `config_diff` (a recipe expressed as overrides of a base config).
The launcher that runs the sweeps is experiments/sweep.py."""

import hashlib
import itertools
import re

import ml_collections

from phi1 import run_identity


def grid(base: dict | None = None, **axes) -> list[dict]:
  """Cartesian product of `axes` (dotted key, with "." written as "__": `model__n_layers=[2, 4]`),
  each point merged into `base`; names read `n_layers-2_d_model-64`.

  A name holds every axis with more than one value (one value does not tell runs apart), under
  the shortest key suffix no other axis shares (`model.dropout` vs `data.dropout`), and values
  that shorten alike (long lists, paths) get a short digest so no two runs share a name."""
  keys = list(axes)
  dotted = {k: k.replace("__", ".") for k in keys}
  labels = {k: _unique_suffix(dotted[k], [dotted[o] for o in keys if o != k]) for k in keys}
  texts = {k: _value_labels(axes[k]) for k in keys}
  runs = []
  for index in itertools.product(*(range(len(axes[k])) for k in keys)):
    run = dict(base or {})
    run.update({dotted[k]: axes[k][i] for k, i in zip(keys, index)})
    run.setdefault("name", "_".join(f"{labels[k]}-{texts[k][i]}" for k, i in zip(keys, index)
                                    if len(axes[k]) > 1) or "base")
    runs.append(run)
  return runs


def _unique_suffix(key: str, others: list[str]) -> str:
  parts = key.split(".")
  for n in range(1, len(parts) + 1):
    suffix = ".".join(parts[-n:])
    if not any(o == suffix or o.endswith("." + suffix) for o in others):
      return suffix.replace(".", "-")
  return key.replace(".", "-")


def _value_labels(values: list) -> list[str]:
  """Short readable labels, made distinct with a digest where two different values shorten alike."""
  labels = [short_label(v) for v in values]
  for i, label in enumerate(labels):
    if any(labels[j] == label and repr(values[j]) != repr(values[i]) for j in range(len(values))):
      digest = hashlib.sha256(repr(values[i]).encode()).hexdigest()[:6]
      labels[i] = f"{label[:16]}-{digest}"
  return labels


def config_diff(base: ml_collections.ConfigDict, target: ml_collections.ConfigDict) -> dict:
  """Dotted overrides that turn `base` into `target` (e.g. a finetune recipe as a sweep run)."""
  before = run_identity.flatten(base.to_dict())
  return {k: v for k, v in run_identity.flatten(target.to_dict()).items()
          if before.get(k, object()) != v}


def short_label(value) -> str:
  text = str(value) if not isinstance(value, float) else f"{value:g}"
  return re.sub(r"[^A-Za-z0-9.]+", "", text)[:24] or "x"
