"""AST match rate tau: how alike two pieces of Python are once names, literals and prose are gone.

The paper (phi-1, Section 5) prunes training data by "a match rate tau" computed from "the string
edit distance between the abstract syntax trees" of a training snippet and a HumanEval problem,
"agnostic to names, comments and docstrings". It gives no exact definition, so ours is:

1. Parse the code with `ast.parse`. Walk the tree depth-first in pre-order (a node, then its
   children in field order, as `ast.iter_child_nodes` yields them) and write down the *class name*
   of every node: `FunctionDef`, `arguments`, `arg`, `For`, `Name`, `BinOp`, `Add`, `Constant`, ...
   This drops, by construction,
   - identifiers: `Name.id`, `arg.arg`, `FunctionDef.name`, `Attribute.attr`, `alias.name`, ...
     are fields holding strings, not nodes, so renaming changes nothing;
   - literal values: a literal is one `Constant` node whatever its value or type;
   - comments and formatting: they never reach the AST.
   We also skip docstrings (a string-constant expression that is the first statement of a module,
   class or function body, with everything under it), and the expression-context nodes
   `Load`/`Store`/`Del`, which are implied by their parent and would only dilute the sequence.
2. Each node class becomes one character (a fixed table over the classes of the running Python's
   `ast` module), so a tree becomes a string `s`.
3. tau(a, b) = 1 - lev(s_a, s_b) / max(len(s_a), len(s_b)), with lev the Levenshtein distance
   (unit-cost insert, delete, substitute). tau = 1 means identical trees up to names, literals,
   comments and docstrings; tau >= 0.9 means at most one edit per ten nodes of the longer tree.

Units compared. A benchmark problem is the concatenation, in source order, of the sequences of its
solution's top-level function and class definitions (HumanEval: prompt + canonical solution, which
includes helpers such as `is_palindrome` in HumanEval/10; MBPP: `code`). A corpus record is cut into
units: every function definition at any depth (methods and nested functions included), and every
pair of consecutive top-level definitions (so a planted solution with its helper still matches as
one unit). A record's tau against a problem is the best over its units.

Very short problems (fewer than `min_nodes` = 16 nodes) get no tau: `def f(a, b): return a + b`
has ten nodes and matches thousands of unrelated functions exactly, so a tau on it is no evidence of
contamination. That leaves out 13 of HumanEval's 164 problems and 164 of MBPP's 974 (measured on
the standard library, 16 keeps false positives at tau = 0.9 under 1% of files; 12 gives 2.6%).
The n-gram and embedding measures still see them.

Speed. All pairs would be (units x problems) edit distances; we prune with bounds that never drop
a pair whose tau could reach the cut-off, and compare identical unit strings once:
- length: lev >= |len_a - len_b|, so tau >= t needs min/max length >= t. Units are sorted by length
  and cut into buckets (lengths within 10%); each bucket meets only the problems whose length can
  reach the cut-off against some unit of the bucket, in one call of rapidfuzz's multi-threaded C++
  `process.cdist` (bit-parallel Levenshtein with the cut-off); exact tau is then recomputed for the
  few pairs that pass.
- without rapidfuzz (numpy dynamic programme, ~100x slower per pair), a per-unit length bound plus a
  node-class histogram bound, lev >= max(sum(h_a - h_b)+, sum(h_b - h_a)+) (every node class one
  side has in excess must be deleted or substituted away), keep the edit distances to a handful.
"""

from __future__ import annotations

import ast
import dataclasses
import warnings
from typing import Iterable, Sequence

import numpy as np

try:  # C++ edit distance; optional (pip install rapidfuzz), numpy fallback below.
  from rapidfuzz import process as _rf_process
  from rapidfuzz.distance import Levenshtein as _rf_levenshtein
except ImportError:  # pragma: no cover - exercised only where rapidfuzz is absent
  _rf_process = _rf_levenshtein = None

DEFAULT_MIN_NODES = 16

_NODE_CLASSES = sorted(
    name for name in dir(ast)
    if isinstance(getattr(ast, name), type) and issubclass(getattr(ast, name), ast.AST))
# One character per node class; code points from U+0100 keep them printable and distinct.
_CHAR_OF = {name: chr(0x100 + i) for i, name in enumerate(_NODE_CLASSES)}
_CHAR_BY_TYPE = {getattr(ast, name): char for name, char in _CHAR_OF.items()}
N_NODE_CLASSES = len(_CHAR_OF) + 1  # + one slot for classes unknown to this table
_DEF_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_DEF_SET = frozenset(_DEF_TYPES)
_DEF_OR_MODULE = frozenset((ast.Module, *_DEF_TYPES))


def _is_docstring(stmt: ast.stmt) -> bool:
  return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
          and isinstance(stmt.value.value, str))


# Fields that never hold a node (names, constants, flags), per class where the name is shared
# with a node-holding field elsewhere (ImportFrom.names holds `alias` nodes; Global.names strs);
# `ctx` (Load/Store/Del) and `type_ignores` are dropped from the sequence anyway. Skipping them
# up front halves the walk, which is most of decontamination's time.
_SCALAR_FIELDS = {"name", "asname", "id", "arg", "attr", "module", "level", "kind", "type_comment",
                  "conversion", "is_async", "simple", "rest", "kwd_attrs", "tag", "ctx",
                  "type_ignores", "n", "s"}
_SCALAR_BY_CLASS = {ast.Constant: {"value"}, ast.Global: {"names"}, ast.Nonlocal: {"names"},
                    ast.MatchSingleton: {"value"}}
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _child_fields(cls: type) -> tuple[str, ...]:
  """The node-holding fields of `cls`, last first (they are pushed on a stack)."""
  fields = _CHILD_FIELDS.get(cls)
  if fields is None:
    skip = _SCALAR_FIELDS | _SCALAR_BY_CLASS.get(cls, set())
    fields = _CHILD_FIELDS[cls] = tuple(f for f in reversed(cls._fields) if f not in skip)
  return fields


def _traverse(root: ast.AST) -> tuple[list[str], dict[ast.AST, tuple[int, int]]]:
  """One pre-order walk: the node-class characters, and the [start, end) span of every function
  and class definition (a subtree is contiguous in pre-order, so its sequence is a slice)."""
  chars: list[str] = []
  spans: dict[ast.AST, tuple[int, int]] = {}
  stack: list = [root]
  char_by_type, child_fields = _CHAR_BY_TYPE, _CHILD_FIELDS
  while stack:
    n = stack.pop()
    cls = type(n)
    if cls is tuple:  # (definition, start): its subtree is done
      spans[n[0]] = (n[1], len(chars))
      continue
    char = char_by_type.get(cls)
    if char is None:
      if not isinstance(n, ast.AST):  # None in a list field (Dict.keys for `**mapping`), or a
        continue                      # scalar in a field this table does not know
      char = "\uffff"
    chars.append(char)
    if cls in _DEF_SET:
      stack.append((n, len(chars) - 1))
    fields = child_fields.get(cls)  # the cache looked up inline: one call less per node
    for field in fields if fields is not None else _child_fields(cls):
      value = getattr(n, field, None)
      if type(value) is list:
        if field == "body" and cls in _DEF_OR_MODULE and value and _is_docstring(value[0]):
          value = value[1:]
        stack.extend(reversed(value))
      elif value is not None:
        stack.append(value)
  return chars, spans


def node_sequence(node: ast.AST) -> str:
  """The pre-order node-class string of `node` (see the module docstring for what is dropped)."""
  return "".join(_traverse(node)[0])


def parse(code: str) -> ast.Module | None:
  """`ast.parse`, or None for code that does not parse (Python 2, templates, fragments)."""
  try:
    with warnings.catch_warnings():  # old escapes in strings ("\d") warn; they are not our concern
      warnings.simplefilter("ignore")
      return ast.parse(code)
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return None


def benchmark_sequence(code: str) -> str | None:
  """A benchmark solution as one unit: its top-level definitions concatenated, or the module."""
  tree = parse(code)
  if tree is None:
    return None
  chars, spans = _traverse(tree)
  top = [spans[s] for s in tree.body if isinstance(s, _DEF_TYPES)]
  if not top:
    return "".join(chars)
  return "".join("".join(chars[a:b]) for a, b in top)


def corpus_units(code: str) -> list[str] | None:
  """A corpus record's units: every function (any depth) and consecutive top-level def pairs."""
  tree = parse(code)
  if tree is None:
    return None
  chars, spans = _traverse(tree)
  units = ["".join(chars[a:b]) for node, (a, b) in spans.items()
           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
  top = ["".join(chars[slice(*spans[s])]) for s in tree.body if isinstance(s, _DEF_TYPES)]
  units.extend(a + b for a, b in zip(top, top[1:]))
  return units


def match_rate(a: str, b: str) -> float:
  """tau(a, b) = 1 - lev(a, b) / max(len(a), len(b)); 1.0 for two empty sequences."""
  longest = max(len(a), len(b))
  if longest == 0:
    return 1.0
  return 1.0 - levenshtein(a, b) / longest


def levenshtein(a: str, b: str, max_dist: int | None = None) -> int:
  """Unit-cost edit distance; with `max_dist`, any value above it may be returned as max_dist + 1."""
  if _rf_levenshtein is not None:
    return _rf_levenshtein.distance(a, b, score_cutoff=max_dist)
  return _levenshtein_numpy(a, b, max_dist)


def _levenshtein_numpy(a: str, b: str, max_dist: int | None = None) -> int:
  """Row-by-row DP; the in-row insertion chain is resolved with a running minimum."""
  if len(a) < len(b):
    a, b = b, a
  if not b:
    return len(a)
  b_codes = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
  cols = np.arange(len(b) + 1, dtype=np.int64)
  prev = cols.copy()
  a_codes = np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32)
  for i, ch in enumerate(a_codes, 1):
    sub = prev[:-1] + (b_codes != ch)
    best = np.empty_like(prev)
    best[0] = i
    best[1:] = np.minimum(prev[1:] + 1, sub)
    # cur[j] = min_k<=j (best[k] + j - k): the insertion chain along the row.
    prev = np.minimum.accumulate(best - cols) + cols
    if max_dist is not None and prev.min() > max_dist:
      return max_dist + 1
  return int(prev[-1])


def histogram(seq: str) -> np.ndarray:
  """Counts of each node class in `seq`, shape [N_NODE_CLASSES]."""
  codes = np.frombuffer(seq.encode("utf-32-le"), dtype=np.uint32).astype(np.int64) - 0x100
  codes = np.where((codes >= 0) & (codes < N_NODE_CLASSES - 1), codes, N_NODE_CLASSES - 1)
  return np.bincount(codes, minlength=N_NODE_CLASSES).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Match:
  unit: int        # index into the queried unit sequences
  problem: int     # index into the index's problems
  tau: float


class AstIndex:
  """Benchmark problems' sequences, searchable for units with tau >= a cut-off."""

  def __init__(self, problem_sequences: Sequence[str | None], *, min_nodes: int = DEFAULT_MIN_NODES,
               use_rapidfuzz: bool = True, workers: int = 1):
    self.min_nodes = min_nodes
    self.workers = workers
    self.use_rapidfuzz = use_rapidfuzz and _rf_process is not None
    self.sequences = list(problem_sequences)
    self.usable = [i for i, s in enumerate(self.sequences) if s is not None and len(s) >= min_nodes]
    usable = sorted(self.usable, key=lambda i: len(self.sequences[i]))
    self._order = np.array(usable, dtype=np.int64)
    self._sorted = [self.sequences[i] for i in usable]
    self._lengths = np.array([len(s) for s in self._sorted], dtype=np.int64)
    self._hists = (np.stack([histogram(s) for s in self._sorted])
                   if usable else np.zeros((0, N_NODE_CLASSES), np.int32))
    self.pairs_considered = 0     # units x usable problems
    self.pairs_after_length = 0   # left by the length bound
    self.pairs_edit_distance = 0  # edit distances actually computed (with a cut-off)

  def pair_counts(self) -> tuple[int, int, int]:
    return self.pairs_considered, self.pairs_after_length, self.pairs_edit_distance

  def _length_window(self, lo_len: int, hi_len: int, tau_min: float) -> tuple[int, int]:
    """Problems (sorted positions) whose length can reach tau_min against a length in [lo, hi]."""
    lo = int(np.ceil(lo_len * tau_min - 1e-9))
    hi = int(np.floor(hi_len / tau_min + 1e-9)) if tau_min > 0 else np.iinfo(np.int64).max
    return (int(np.searchsorted(self._lengths, lo, side="left")),
            int(np.searchsorted(self._lengths, hi, side="right")))

  def search(self, units: Iterable[str], tau_min: float) -> list[Match]:
    """Every (unit, problem) with tau >= tau_min, over problems of at least min_nodes nodes."""
    units = list(units)
    by_seq: dict[str, list[int]] = {}
    for i, u in enumerate(units):
      by_seq.setdefault(u, []).append(i)
    distinct = list(by_seq)
    self.pairs_considered += len(distinct) * len(self._order)
    search = self._search_rapidfuzz if self.use_rapidfuzz else self._search_numpy
    matches = []
    for k, problem, tau in search(distinct, tau_min):
      matches.extend(Match(u, problem, tau) for u in by_seq[distinct[k]])
    return matches

  def _search_rapidfuzz(self, seqs: list[str], tau_min: float):
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
    start = 0
    while start < len(order):
      first = len(seqs[order[start]])
      stop = start
      while stop < len(order) and len(seqs[order[stop]]) <= max(first * 1.1, first + 2):
        stop += 1
      bucket = order[start:stop]
      start = stop
      lo, hi = self._length_window(first, len(seqs[bucket[-1]]), tau_min)
      if hi <= lo:
        continue
      self.pairs_after_length += len(bucket) * (hi - lo)
      self.pairs_edit_distance += len(bucket) * (hi - lo)
      similarity = _rf_process.cdist(
          [seqs[k] for k in bucket], self._sorted[lo:hi],
          scorer=_rf_levenshtein.normalized_similarity, score_cutoff=max(tau_min - 1e-6, 0.0),
          workers=self.workers, dtype=np.float64)
      for row, col in zip(*np.nonzero(similarity > 0)):
        seq, problem_seq = seqs[bucket[row]], self._sorted[lo + col]
        longest = max(len(seq), len(problem_seq))
        if longest < self.min_nodes:
          continue
        tau = 1.0 - _rf_levenshtein.distance(seq, problem_seq) / longest  # exact, not float32
        if tau >= tau_min:
          yield bucket[row], int(self._order[lo + col]), tau

  def _search_numpy(self, seqs: list[str], tau_min: float):
    for k, seq in enumerate(seqs):
      n = len(seq)
      lo, hi = self._length_window(n, n, tau_min)
      if hi <= lo:
        continue
      self.pairs_after_length += hi - lo
      diff = self._hists[lo:hi] - histogram(seq)[None, :]
      lower_bound = np.maximum(np.clip(diff, 0, None).sum(1), np.clip(-diff, 0, None).sum(1))
      longest = np.maximum(self._lengths[lo:hi], n)
      max_dist = np.floor((1.0 - tau_min) * longest + 1e-9).astype(np.int64)
      keep = np.nonzero((lower_bound <= max_dist) & (longest >= self.min_nodes))[0]
      self.pairs_edit_distance += len(keep)
      for j in keep:
        d = levenshtein(seq, self._sorted[lo + j], int(max_dist[j]))
        if d <= max_dist[j]:
          yield k, int(self._order[lo + j]), 1.0 - d / int(longest[j])
