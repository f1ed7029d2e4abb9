"""`--plan`: what a textbooks/exercises run would ask for, without asking.

Walks the slots a run of N records would use (this rank's, under `--shard I/W`), builds every
prompt exactly as the run would, and measures: distinct prompts and the most any prompt repeats,
distinct constraint cells and the most any cell repeats (exercises: per function name too), the
expected tokens and cost at the model's price, and writes a sample of prompts to read. It assumes
every slot yields a record (rejects would add slots; `report` measures the real rate).

Token estimates: prompts at 4 characters per token plus chat framing (OpenAI's rule of thumb for
English); textbook answers at 1.5 tokens per requested word (prose plus code); exercises at 205
tokens each, the paper's own average (180M tokens over 879.5K exercises).
"""

import json
import os
import time

import numpy as np

EXERCISE_TOKENS = 180e6 / 879.5e3
TOKENS_PER_WORD = 1.5
CHARS_PER_TOKEN = 4
CELL_KEYS = {"textbooks": ("topic", "subtopic", "leaf", "audience", "style"),
             "exercises": ("topic", "function_name", "difficulty")}


def _repeats(hashes: np.ndarray) -> tuple[int, int]:
  """(distinct values, the largest count of one value)."""
  if not len(hashes):
    return 0, 0
  _, counts = np.unique(hashes, return_counts=True)
  return int(len(counts)), int(counts.max())


def plan(task, n: int, slots, *, prices, sample_path: str | None, sample_size: int = 50) -> dict:
  started = time.monotonic()
  prompts = np.empty(n, dtype=np.int64)
  cells = np.empty(n, dtype=np.int64)
  names = np.empty(n if task.kind == "exercises" else 0, dtype=np.int64)
  prompt_tokens = completion_tokens = 0
  keys = CELL_KEYS[task.kind]
  sample_at = set(np.linspace(0, max(n - 1, 0), min(sample_size, n), dtype=np.int64).tolist())
  sample = []
  for j in range(n):
    slot = slots(j)
    request, constraints = task.request(slot)
    text = "\n".join(m["content"] for m in request.messages)
    prompts[j] = hash(text)  # 64-bit; a false collision in 1M prompts has odds ~1e-8
    cells[j] = hash(tuple(constraints[k] for k in keys))
    prompt_tokens += len(text) // CHARS_PER_TOKEN + 4 * len(request.messages) + 3
    if task.kind == "exercises":
      names[j] = hash(constraints["function_name"])
      completion_tokens += EXERCISE_TOKENS
    else:
      completion_tokens += TOKENS_PER_WORD * constraints["words"]
    if j in sample_at:
      sample.append({"slot": slot, "constraints": constraints, "prompt": text})
  distinct_prompts, max_prompt_repeats = _repeats(prompts)
  distinct_cells, max_cell_repeats = _repeats(cells)
  result = {
      "kind": task.kind, "requested": n, "distinct_prompts": distinct_prompts,
      "max_prompt_repeats": max_prompt_repeats, "distinct_cells": distinct_cells,
      "max_cell_repeats": max_cell_repeats, "cell": list(keys),
      "cells_per_round": task.allocation.per_round,
  }
  if task.kind == "exercises":
    result["distinct_function_names"], result["max_function_name_repeats"] = _repeats(names)
  completion_tokens = int(completion_tokens)
  result.update({
      "expected_prompt_tokens": prompt_tokens, "expected_completion_tokens": completion_tokens,
      "expected_tokens_per_record": round(completion_tokens / max(n, 1), 1),
      "expected_cost_usd": (round(prices.cost(prompt_tokens, completion_tokens), 2)
                            if prices is not None else None),
      "price_per_mtok": ([prices.input_per_mtok, prices.output_per_mtok]
                         if prices is not None else None),
  })
  if sample_path:
    os.makedirs(os.path.dirname(os.path.abspath(sample_path)), exist_ok=True)
    with open(sample_path, "w") as f:
      for item in sample:
        f.write(json.dumps(item, ensure_ascii=False) + "\n")
    result["sample"] = sample_path
  result["seconds"] = round(time.monotonic() - started, 1)
  return result
