"""AST match rate tau: how alike two pieces of Python are once names, literals and prose are gone.

The paper (phi-1, Section 5) prunes training data by "a match rate tau" computed from "the string
edit distance between the abstract syntax trees" of a training snippet and a HumanEval problem,
"agnostic to names, comments and docstrings". It gives no exact definition, so ours is:

1. Parse the code with `ast.parse`. Walk the tree depth-first in pre-order (a node, then its
   children in field order) and write down one symbol per node: its *class name* (`FunctionDef`,
   `arguments`, `arg`, `For`, `Name`, `BinOp`, `Add`, `Constant`, ...). This drops, by construction,
   - the names the code chooses: `Name.id`, `arg.arg`, `FunctionDef.name`, `alias.name`, ... are
     fields holding strings, not nodes, so renaming changes nothing;
   - literal values (a literal keeps only its type: `Constant:str`, `Constant:int`, ...);
   - comments and formatting: they never reach the AST.
   Three refinements keep what the code did *not* choose, because without them a short solution
   (`return len(string)`, 9 nodes) matches a large share of all real files:
   - a `Name` that is a builtin (`len`, `sorted`, `set`, `range`, `str`, ...) is `Name:<builtin>`;
   - an `Attribute` whose attribute is a method of a builtin type (`.join`, `.swapcase`, `.append`)
     is `Attribute:<method>`; other attributes stay plain `Attribute`;
   - a `Constant` carries its type, not its value.
   Docstrings (a string-constant expression that is the first statement of a module, class or
   function body) and the expression contexts `Load`/`Store`/`Del` are skipped.
2. Each symbol is one character (a fixed table over this Python's `ast` classes, builtins and
   builtin types' methods), so a tree becomes a string `s`.
3. tau(a, b) = 1 - lev(s_a, s_b) / max(len(s_a), len(s_b)), lev the Levenshtein distance
   (unit-cost insert, delete, substitute), with one more kind of edit: inserting or removing one
   *small statement* (at most `STATEMENT_EDIT_MAX_NODES` = 8 nodes, e.g. `count = 0`,
   `print(x)`, `assert n >= 0`, `if not xs: return None`) counts as one edit, like a changed node.
   So a copy with one statement added or dropped still matches: without this, `count = 0` (3
   nodes) inserted into a 12-node solution alone gives tau = 0.8. Only one such edit per pair, and
   never the only statement of a block (that would turn any one-line body into any other).
   tau = 1 means identical trees up to names, literal values, comments and docstrings.

Every problem has a tau, however short (no minimum size): the refinements above, not an
exemption, keep short solutions from matching unrelated code (measured on the standard library in
tests/test_ast_match.py and tests/test_decontaminate.py).

Units compared. A benchmark problem is the concatenation, in source order, of the sequences of its
solution's top-level function and class definitions (HumanEval: prompt + canonical solution, which
includes helpers such as `is_palindrome` in HumanEval/10; MBPP: `code`). A corpus record is cut into
units: every function definition at any depth (methods and nested functions included), and every
pair of consecutive top-level definitions (so a planted solution with its helper still matches as
one unit). A record's tau against a problem is the best over its units.

Speed. All pairs would be (units x problems) edit distances. Sequences are sorted by length and cut
into buckets (lengths within 10%); each bucket meets only the problem sequences whose length can
reach the cut-off (lev >= |len_a - len_b|, widened by the statement edit), in one call of
rapidfuzz's multi-threaded C++ `process.cdist` (bit-parallel Levenshtein with a cut-off, which
returns exact distances under it).
"""

from __future__ import annotations

import ast
import bisect
import builtins
import dataclasses
import warnings
from typing import Iterable, Sequence

import numpy as np
from rapidfuzz import process as _rf_process
from rapidfuzz.distance import Levenshtein as _rf_levenshtein

STATEMENT_EDIT_MAX_NODES = 8
VERSION = 2  # of the definition above: saved scans made under another are not reused

_NODE_CLASSES = sorted(
    name for name in dir(ast)
    if isinstance(getattr(ast, name), type) and issubclass(getattr(ast, name), ast.AST))
_BUILTIN_NAMES = sorted(n for n in vars(builtins) if not n.startswith("_"))
_BUILTIN_METHODS = sorted({m for t in (str, bytes, list, tuple, dict, set, int, float)
                           for m in dir(t) if not m.startswith("_")})
_CONSTANT_TYPES = ("str", "bytes", "int", "float", "complex", "bool", "NoneType", "ellipsis")
# One character per symbol; code points from U+0100 keep them printable and distinct.
_SYMBOLS = (_NODE_CLASSES + [f"Name:{n}" for n in _BUILTIN_NAMES]
            + [f"Attribute:{m}" for m in _BUILTIN_METHODS] + [f"Constant:{t}" for t in _CONSTANT_TYPES])
_CHAR_OF = {name: chr(0x100 + i) for i, name in enumerate(_SYMBOLS)}
_CHAR_BY_TYPE = {getattr(ast, name): _CHAR_OF[name] for name in _NODE_CLASSES}
_BUILTIN_CHAR = {n: _CHAR_OF[f"Name:{n}"] for n in _BUILTIN_NAMES}
_METHOD_CHAR = {m: _CHAR_OF[f"Attribute:{m}"] for m in _BUILTIN_METHODS}
_CONSTANT_CHAR = {t: _CHAR_OF[f"Constant:{t}"] for t in _CONSTANT_TYPES}
_UNKNOWN = "\uffff"
_DEF_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FUNCTION_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef)
_DEF_SET = frozenset(_DEF_TYPES)
_DEF_OR_MODULE = frozenset((ast.Module, *_DEF_TYPES))
_NO_STATEMENT_EDITS = frozenset((ast.Module, ast.ClassDef))  # blocks outside any function


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


def _symbol(n: ast.AST, cls: type) -> str:
  if cls is ast.Name:
    return _BUILTIN_CHAR.get(n.id, _CHAR_BY_TYPE[cls])
  if cls is ast.Attribute:
    return _METHOD_CHAR.get(n.attr, _CHAR_BY_TYPE[cls])
  if cls is ast.Constant:
    return _CONSTANT_CHAR.get(type(n.value).__name__, _CHAR_BY_TYPE[cls])
  return _CHAR_BY_TYPE.get(cls, _UNKNOWN)


_REFINED = frozenset((ast.Name, ast.Attribute, ast.Constant))


@dataclasses.dataclass
class _Walk:
  chars: list[str]
  spans: dict[ast.AST, tuple[int, int]]     # [start, end) of every function and class definition
  statements: list[tuple[int, int]]         # [start, end) of statements a statement edit may drop


def _traverse(root: ast.AST) -> _Walk:
  """One pre-order walk (a subtree is contiguous in pre-order, so its sequence is a slice)."""
  chars: list[str] = []
  spans: dict[ast.AST, tuple[int, int]] = {}
  statements: list[tuple[int, int]] = []
  droppable: set[int] = set()  # ids of statements that are small-edit candidates
  stack: list = [root]
  char_by_type, child_fields = _CHAR_BY_TYPE, _CHILD_FIELDS
  while stack:
    n = stack.pop()
    cls = type(n)
    if cls is tuple:  # (node, start, is_definition): its subtree is done
      node, start, is_def = n
      if is_def:
        spans[node] = (start, len(chars))
      elif len(chars) - start <= STATEMENT_EDIT_MAX_NODES:
        statements.append((start, len(chars)))
      continue
    char = _symbol(n, cls) if cls in _REFINED else char_by_type.get(cls)
    if char is None:
      if not isinstance(n, ast.AST):  # None in a list field (Dict.keys for `**mapping`), or a
        continue                      # scalar in a field this table does not know
      char = _UNKNOWN
    if cls in _DEF_SET:
      stack.append((n, len(chars), True))
    elif id(n) in droppable:
      stack.append((n, len(chars), False))
    chars.append(char)
    fields = child_fields.get(cls)  # the cache looked up inline: one call less per node
    for field in fields if fields is not None else _child_fields(cls):
      value = getattr(n, field, None)
      if type(value) is list:
        if field == "body" and cls in _DEF_OR_MODULE and value and _is_docstring(value[0]):
          value = value[1:]
        if len(value) >= 2 and cls not in _NO_STATEMENT_EDITS and isinstance(value[0], ast.stmt):
          droppable.update(id(s) for s in value)
        stack.extend(reversed(value))
      elif value is not None:
        stack.append(value)
  statements.sort()
  return _Walk(chars, spans, statements)


@dataclasses.dataclass(frozen=True)
class Unit:
  """A unit's sequence and the sequences it has with one small statement removed."""
  sequence: str
  statement_less: tuple[str, ...] = ()

  def __len__(self) -> int:
    return len(self.sequence)


def _unit(walk: _Walk, pieces: Sequence[tuple[int, int]]) -> Unit:
  """The unit made of the `pieces` (spans) of a walk, with its one-statement-less variants."""
  chars = walk.chars
  sequence = "".join("".join(chars[a:b]) for a, b in pieces)
  variants = []
  for a, b in pieces:
    i = bisect.bisect_left(walk.statements, (a + 1, -1))
    while i < len(walk.statements) and walk.statements[i][0] < b:
      s, e = walk.statements[i]
      i += 1
      if e <= b:
        variants.append("".join("".join(chars[x:y]) if (x, y) != (a, b) else
                                "".join(chars[a:s]) + "".join(chars[e:b]) for x, y in pieces))
  return Unit(sequence, tuple(dict.fromkeys(variants)))


def node_sequence(node: ast.AST) -> str:
  """The pre-order symbol string of `node` (see the module docstring for what is dropped)."""
  return "".join(_traverse(node).chars)


def parse(code: str) -> ast.Module | None:
  """`ast.parse`, or None for code that does not parse (Python 2, templates, fragments)."""
  try:
    with warnings.catch_warnings():  # old escapes in strings ("\d") warn; they are not our concern
      warnings.simplefilter("ignore")
      return ast.parse(code)
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return None


def benchmark_unit(code: str) -> Unit | None:
  """A benchmark solution as one unit: its top-level definitions concatenated, or the module."""
  tree = parse(code)
  if tree is None:
    return None
  walk = _traverse(tree)
  top = [walk.spans[s] for s in tree.body if isinstance(s, _DEF_TYPES)]
  return _unit(walk, top or [(0, len(walk.chars))])


def corpus_units(code: str) -> list[Unit] | None:
  """A corpus record's units: every function (any depth) and consecutive top-level def pairs."""
  tree = parse(code)
  if tree is None:
    return None
  walk = _traverse(tree)
  units = [_unit(walk, [span]) for node, span in walk.spans.items()
           if isinstance(node, _FUNCTION_TYPES)]
  top = [walk.spans[s] for s in tree.body if isinstance(s, _DEF_TYPES)]
  units.extend(Unit("".join(walk.chars[a:b]) + "".join(walk.chars[c:d]))
               for (a, b), (c, d) in zip(top, top[1:]))
  return units


def match_rate(a: str, b: str) -> float:
  """Plain tau(a, b) = 1 - lev(a, b) / max(len(a), len(b)); 1.0 for two empty sequences."""
  longest = max(len(a), len(b))
  if longest == 0:
    return 1.0
  return 1.0 - _rf_levenshtein.distance(a, b) / longest


def unit_match_rate(a: Unit, b: Unit) -> float:
  """tau with the statement edit: the best of the plain tau and, for each small statement removed
  from one side, 1 - (lev + 1) / max(len(a), len(b)) (lengths of the whole units)."""
  longest = max(len(a), len(b))
  if longest == 0:
    return 1.0
  best = _rf_levenshtein.distance(a.sequence, b.sequence)
  for x, y in [(v, b.sequence) for v in a.statement_less] + [(a.sequence, v) for v in b.statement_less]:
    best = min(best, _rf_levenshtein.distance(x, y, score_cutoff=best) + 1)
  return 1.0 - best / longest


def best_tau(units: Iterable[Unit], problem: Unit | None) -> float | None:
  """A record's tau against one problem: the best over its units (None: nothing to compare)."""
  if problem is None:
    return None
  return max((unit_match_rate(u, problem) for u in units), default=None)


@dataclasses.dataclass(frozen=True)
class Match:
  unit: int        # index into the queried units
  problem: int     # index into the index's problems
  tau: float


class _Flat:
  """Every sequence of a list of units (the unit's, and its statement-less ones), sorted by length:
  owner unit, whole-unit length, and cost (0, or 1 for a statement edit)."""

  def __init__(self, units: Sequence[Unit | None]):
    rows = []
    for k, u in enumerate(units):
      if u is None:
        continue
      rows.append((len(u.sequence), u.sequence, k, len(u), 0))
      rows.extend((len(v), v, k, len(u), 1) for v in u.statement_less)
    rows.sort(key=lambda r: r[0])
    self.sequences = [r[1] for r in rows]
    self.lengths = np.array([r[0] for r in rows], np.int64)
    self.owner = np.array([r[2] for r in rows], np.int64)
    self.whole = np.array([r[3] for r in rows], np.int64)
    self.cost = np.array([r[4] for r in rows], np.int64)


class AstIndex:
  """Benchmark problems' units, searchable for corpus units with tau >= a cut-off."""

  def __init__(self, problems: Sequence[Unit | None], *, workers: int = 1):
    self.workers = workers
    self.problems = list(problems)
    self.n_usable = sum(p is not None for p in self.problems)
    self._flat = _Flat(self.problems)
    # Sequence pairs (statement-less variants included) of distinct units x problems, and the
    # edit distances computed (with a cut-off) after the length bound.
    self.pairs_considered = 0
    self.pairs_edit_distance = 0

  def pair_counts(self) -> tuple[int, int]:
    return self.pairs_considered, self.pairs_edit_distance

  def _length_window(self, lo_len: int, hi_len: int, tau_min: float) -> tuple[int, int]:
    """Problem sequences (sorted positions) whose length can reach tau_min against a sequence of
    length in [lo, hi]: |la - lb| <= lev <= (1 - t) max(whole lengths), and a whole length is at
    most its sequence's + STATEMENT_EDIT_MAX_NODES."""
    slack = STATEMENT_EDIT_MAX_NODES * (1.0 - tau_min)
    lo = int(np.ceil(tau_min * lo_len - slack - 1e-9))
    hi = (int(np.floor((hi_len + slack) / tau_min + 1e-9)) if tau_min > 0
          else np.iinfo(np.int64).max)
    lengths = self._flat.lengths
    return (int(np.searchsorted(lengths, lo, side="left")),
            int(np.searchsorted(lengths, hi, side="right")))

  def search(self, units: Iterable[Unit], tau_min: float) -> list[Match]:
    """The best tau of every (unit, problem) pair with tau >= tau_min."""
    units = list(units)
    by_unit: dict[Unit, list[int]] = {}
    for i, u in enumerate(units):
      by_unit.setdefault(u, []).append(i)
    distinct = list(by_unit)
    query = _Flat(distinct)
    self.pairs_considered += len(query.sequences) * len(self._flat.sequences)
    best: dict[tuple[int, int], float] = {}
    for k, problem, tau in self._search(query, tau_min):
      if tau > best.get((k, problem), -1.0):
        best[(k, problem)] = tau
    return [Match(u, problem, tau) for (k, problem), tau in sorted(best.items())
            for u in by_unit[distinct[k]]]

  def _search(self, query: _Flat, tau_min: float):
    problems = self._flat
    start, n = 0, len(query.sequences)
    while start < n:
      first = int(query.lengths[start])
      stop = int(np.searchsorted(query.lengths, max(first * 1.1, first + 2), side="right"))
      lo, hi = self._length_window(first, int(query.lengths[stop - 1]), tau_min)
      rows = slice(start, stop)
      start = stop
      if hi <= lo:
        continue
      longest = max(int(query.whole[rows].max()), int(problems.whole[lo:hi].max()))
      cutoff = int(np.floor((1.0 - tau_min) * longest + 1e-9))
      self.pairs_edit_distance += (rows.stop - rows.start) * (hi - lo)
      distance = _rf_process.cdist(query.sequences[rows], problems.sequences[lo:hi],
                                   scorer=_rf_levenshtein.distance, score_cutoff=cutoff,
                                   workers=self.workers, dtype=np.int32)
      for row, col in zip(*np.nonzero(distance <= cutoff)):
        q, p = rows.start + row, lo + col
        cost = query.cost[q] + problems.cost[p]
        if cost > 1:  # one statement edit per pair
          continue
        tau = 1.0 - (int(distance[row, col]) + cost) / max(query.whole[q], problems.whole[p])
        if tau >= tau_min:
          yield int(query.owner[q]), int(problems.owner[p]), float(tau)
