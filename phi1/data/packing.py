"""Packing tokenized documents into fixed-length training rows.

The token stream is the paper's (§2.3): documents joined by `<|endoftext|>`. We shift once per
document, before packing: a document d_1..d_n becomes the aligned pair

    inputs  = [eos, d_1, ..., d_n]        targets = [d_1, ..., d_n, eos]

i.e. the eos that closes the previous document is the input that predicts this document's first
token. Concatenating these pairs and cutting every T positions is exactly the concatenate-and-slice
stream `inputs = s[i:i+T]`, `targets = s[i+1:i+T+1]` with stride T: every token is a target exactly
once, nothing is dropped. Document mode cuts the same stream at the same places, so the rows
hold the same tokens; it only adds `segment_ids` (1-based per piece of a document in the row,
0 = padding) and `positions` (0 at the start of each piece), so attention cannot cross a document
boundary (the paper does not say whether it masked; see PAPER.md). A document longer than what is
left of a row continues in the next row as a new segment: with rotary embeddings only relative
positions matter, so restarting positions there changes nothing.

`loss_mask` is 0 on padding and, when the prompt is not trained on, on targets inside the prompt.
"""

from __future__ import annotations

import copy
from typing import Any

import grain
import numpy as np

PACKINGS = ("concat", "document")


class DocumentToExample:
  """(tokens, prompt_len) -> aligned {inputs, targets, loss_mask} for one document."""

  def __init__(self, eos_id: int, loss_on_prompt: bool):
    self.eos_id, self.loss_on_prompt = eos_id, loss_on_prompt

  def __call__(self, doc: tuple[np.ndarray, int] | None) -> dict[str, np.ndarray] | None:
    if doc is None:  # a corrupt pre-tokenized record (already counted); grain drops Nones
      return None
    tokens, prompt_len = doc
    n = len(tokens)
    inputs = np.empty(n + 1, np.int32)
    inputs[0] = self.eos_id
    inputs[1:] = tokens
    targets = np.empty(n + 1, np.int32)
    targets[:n] = tokens
    targets[n] = self.eos_id
    loss_mask = np.ones(n + 1, np.float32)
    if not self.loss_on_prompt:
      loss_mask[:prompt_len] = 0.0  # targets[j] for j < prompt_len are prompt tokens
    return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask}


class PackIterDataset(grain.IterDataset):
  """Packs aligned document examples into rows of `seq_len`; see the module docstring.

  With `pad_last`, a finite parent's last partial row is emitted padded (eval); otherwise it is
  dropped (training streams are infinite, so this never happens there).
  """

  def __init__(self, parent: grain.IterDataset, *, seq_len: int, packing: str,
               pad_last: bool = False):
    super().__init__(parent)
    if packing not in PACKINGS:
      raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if seq_len < 1:
      raise ValueError(f"seq_len must be positive, got {seq_len}")
    self.seq_len, self.packing, self.pad_last = seq_len, packing, pad_last

  def __iter__(self) -> grain.DatasetIterator:
    return _PackIterator(self._parent.__iter__(), seq_len=self.seq_len,
                         segments=self.packing == "document", pad_last=self.pad_last)

  def __str__(self) -> str:
    return f"PackIterDataset(seq_len={self.seq_len}, packing={self.packing})"


class _PackIterator(grain.DatasetIterator):
  """State = parent state before the partly used document + how much of it is used.

  Rows are cut only when full, so at most one document is partly used at a time; restoring replays
  that one document from its parent state, so the checkpoint holds no token data.
  """

  def __init__(self, parent: grain.DatasetIterator, *, seq_len: int, segments: bool,
               pad_last: bool):
    super().__init__(parent)
    self._seq_len, self._segments, self._pad_last = seq_len, segments, pad_last
    self._doc: dict[str, np.ndarray] | None = None
    self._doc_state: dict[str, Any] | None = None  # parent state before self._doc
    self._offset = 0
    self._exhausted = False
    self._arange = np.arange(seq_len, dtype=np.int32)

  def _next_doc(self) -> bool:
    self._doc_state = copy.deepcopy(self._parent.get_state())
    try:
      self._doc = next(self._parent)
    except StopIteration:
      self._doc, self._exhausted = None, True
      return False
    self._offset = 0
    return True

  def __next__(self) -> dict[str, np.ndarray]:
    T = self._seq_len
    inputs, targets = np.zeros(T, np.int32), np.zeros(T, np.int32)
    loss_mask = np.zeros(T, np.float32)
    segment_ids, positions = np.zeros(T, np.int32), np.zeros(T, np.int32)
    fill, segment = 0, 0
    while fill < T:
      if self._doc is None and (self._exhausted or not self._next_doc()):
        if fill == 0 or not self._pad_last:
          raise StopIteration
        break
      doc, start = self._doc, self._offset
      n = min(len(doc["inputs"]) - start, T - fill)
      inputs[fill:fill + n] = doc["inputs"][start:start + n]
      targets[fill:fill + n] = doc["targets"][start:start + n]
      loss_mask[fill:fill + n] = doc["loss_mask"][start:start + n]
      segment += 1
      segment_ids[fill:fill + n] = segment
      positions[fill:fill + n] = self._arange[:n]
      fill += n
      self._offset += n
      if self._offset == len(doc["inputs"]):
        self._doc = None
    row = {"inputs": inputs, "targets": targets, "loss_mask": loss_mask}
    if self._segments:
      row["segment_ids"], row["positions"] = segment_ids, positions
    return row

  def get_state(self) -> dict[str, Any]:
    if self._doc is None:
      return {"parent": copy.deepcopy(self._parent.get_state()), "offset": 0, "in_doc": False,
              "exhausted": self._exhausted}
    return {"parent": copy.deepcopy(self._doc_state), "offset": self._offset, "in_doc": True,
            "exhausted": False}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._doc, self._offset, self._exhausted = None, 0, bool(state["exhausted"])
    if state["in_doc"]:
      if not self._next_doc():
        raise ValueError("cannot restore the packing state: the document it was cutting is gone "
                         "(did the data sources change since the checkpoint?)")
      self._offset = int(state["offset"])
