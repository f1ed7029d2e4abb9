"""Weighted constraint tables that ship with data_gen (textbooks.yaml, exercises.yaml).

`load_table("textbooks")` reads the packaged default; any other argument is a path to your own YAML
with the same layout, so a corpus can be steered without touching code.
"""

import hashlib
import os
import random

import yaml

_HERE = os.path.dirname(os.path.abspath(__file__))


def load_table(name_or_path: str) -> dict:
  path = name_or_path if os.path.exists(name_or_path) else os.path.join(_HERE, f"{name_or_path}.yaml")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no constraint table {name_or_path!r} (a packaged name or a YAML path)")
  with open(path) as f:
    table = yaml.safe_load(f)
  table["_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
  return table


def load_words(name: str) -> list[str]:
  """A packaged word list (tables/NAME.txt): one entry per line, `#` lines are comments."""
  with open(os.path.join(_HERE, f"{name}.txt")) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def sha256_of_words(name: str) -> str:
  with open(os.path.join(_HERE, f"{name}.txt"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def weighted(rng: random.Random, items: list) -> dict | str:
  """One item drawn by its `weight` (default 1); plain strings weigh 1."""
  weights = [item.get("weight", 1) if isinstance(item, dict) else 1 for item in items]
  return rng.choices(items, weights)[0]


def name_of(item) -> str:
  return item["name"] if isinstance(item, dict) else item


def require(table: dict, keys: list[str], where: str):
  missing = [k for k in keys if not table.get(k)]
  if missing:
    raise ValueError(f"constraint table {where} lacks {missing}; see data_gen/tables/{where}.yaml")
