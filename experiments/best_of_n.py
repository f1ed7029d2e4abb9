"""Best-of-N checkpoint selection for finetuning runs (paper §2.3: phi-1 is the best of the
checkpoints saved every 1,000 of the 6,000 finetuning steps).

Every kept training checkpoint of a run is evaluated into `eval_<bench>/step_<N>/` (`phi1 eval
--checkpoint WORKDIR --step N`); then `eval_<bench>/summary.json` becomes the best one's summary
with a `selection` block (the rule, the best step, every step's pass@1), and its samples.jsonl is
copied beside it, so readers of `eval_<bench>/` (the registry, Table 3) see the selected model.
The paper does not say which score picked the best; here it is each benchmark's own pass@1, the
later step on ties (docs/fidelity.md).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable

from phi1 import atomic

RULE = "highest pass@1 over every kept checkpoint; the later step on ties"
COPIED = ("samples.jsonl", "problems.jsonl")  # the selected checkpoint's per-sample files


def step_dir(eval_dir: pathlib.Path, step: int) -> pathlib.Path:
  return eval_dir / f"step_{step}"


def select(by_step: dict[int, dict]) -> tuple[int, dict]:
  """(best step, selection block) from {step: summary} (each summary has "pass@1")."""
  if not by_step:
    raise ValueError("no evaluated checkpoints to select from")
  missing = sorted(s for s, summary in by_step.items() if summary.get("pass@1") is None)
  if missing:
    raise ValueError(f"checkpoints {missing} have no pass@1 in their summary.json")
  best = max(by_step, key=lambda s: (by_step[s]["pass@1"], s))
  return best, {"rule": RULE, "best_step": best, "final_step": max(by_step),
                "checkpoints": {str(s): by_step[s]["pass@1"] for s in sorted(by_step)}}


def evaluate_checkpoints(workdir, bench: str, steps: list[int],
                         eval_step: Callable[[int, pathlib.Path], dict]) -> dict:
  """Evaluate each of `steps` (resuming: a step with a summary.json is not rerun), select the best
  and write eval_<bench>/summary.json; returns it. `eval_step(step, out_dir)` runs one eval."""
  eval_dir = pathlib.Path(workdir) / f"eval_{bench}"
  by_step = {}
  for step in steps:
    out = step_dir(eval_dir, step)
    summary_path = out / "summary.json"
    by_step[step] = (json.loads(summary_path.read_text()) if summary_path.is_file()
                     else eval_step(step, out))
  best, selection = select(by_step)
  for name in COPIED:
    source = step_dir(eval_dir, best) / name
    if source.is_file():
      shutil.copyfile(source, eval_dir / name)
  summary = {**by_step[best], "selection": selection}
  # Last: its presence means the selection is complete.
  atomic.write_json(eval_dir / "summary.json", summary, indent=2)
  return summary
