"""Embedders: text -> fixed-size vectors for the quality classifier and the decontamination distance.

The paper embeds code with a pretrained CodeGen model and trains a random forest on the embeddings
(phi-1 §2.1); decontamination compares L2 distances of normalised CodeGen-Mono-350M embeddings (§5).
`Phi1Embedder` runs that model in our code: a `CodeGenForCausalLM.save_pretrained` directory loads
through `phi1.hf.from_hf` (phi-1 descends from CodeGen: same block, same tokenizer), and a
document's embedding is the mean of the final LayerNorm outputs over its tokens (the paper does not
say how it pools; docs/fidelity.md), batched and jitted per length bucket. Any phi1 model (one we
trained, or an HF Phi) works the same way.

Every embedder has `name`, `dim` and `embed(texts) -> float32 [N, dim]`, rows L2-normalised.
- `Phi1Embedder`  : phi1 checkpoint, mean-pooled hidden states. JAX is imported only here, lazily.
- `HashingEmbedder`: hashed token uni+bigram counts; deterministic, no model, ~1000x cheaper; for CI
                     and as a no-GPU baseline.
- `SentenceTransformerEmbedder`: any sentence-transformers model, if that package is installed.
`make_embedder(spec)` builds one from a CLI string: "codegen:DIR" (a CodeGen save_pretrained
directory, checked to be one: the paper's embedder), "phi1:DIR" (export, workdir or HF directory),
"hashing[:DIM]", "sentence-transformers:NAME", "phi1-random:PRESET" (throughput only).
"""

from __future__ import annotations

import os
from typing import Callable, Protocol, Sequence

import numpy as np

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048)


class Embedder(Protocol):
  name: str
  dim: int

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), dim], each row of unit L2 norm (or zero for empty input)."""


def l2_normalise(x_ND: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x_ND, axis=1, keepdims=True)
  return (x_ND / np.maximum(norms, 1e-12)).astype(np.float32)


class HashingEmbedder:
  """Bag of token unigrams and bigrams hashed into `dim` buckets, sublinear counts, L2-normalised."""

  parallel_safe = True  # pure CPU and picklable: the score stage may fan it out over cores

  def __init__(self, dim: int = 1024):
    from sklearn.feature_extraction.text import HashingVectorizer
    self.dim = dim
    self.name = f"hashing:{dim}"
    self._vectorizer = HashingVectorizer(
        n_features=dim, token_pattern=r"[A-Za-z_]\w*|\d+|[^\w\s]", ngram_range=(1, 2),
        lowercase=False, alternate_sign=False, norm=None)

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    counts = self._vectorizer.transform(list(texts)).astype(np.float32)
    counts.data = np.log1p(counts.data)
    return l2_normalise(counts.toarray())


class Phi1Embedder:
  """Mean-pooled final hidden states of a phi1 model, jitted once per (batch, length bucket).

  Documents are sorted by token length so each batch pads to the smallest bucket that fits, then
  results are put back in input order. Right padding under causal attention never changes the real
  tokens' states, and padding is masked out of the mean. Documents longer than the largest bucket
  (or the model's context) keep their first tokens, which carry the imports, names and docstring.
  """

  def __init__(self, model, encode: Callable[[str], list[int]], *, name: str = "phi1",
               batch_size: int = 16, buckets: Sequence[int] = DEFAULT_BUCKETS, pad_id: int = 0):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    self.encode = encode
    self.name = name
    self.dim = model.config.d_model
    self.batch_size = batch_size
    self.buckets = tuple(b for b in sorted(buckets) if b <= model.config.max_seq_len) or (
        model.config.max_seq_len,)
    self.pad_id = pad_id
    self.vocab_size = model.config.vocab_size
    graphdef, state = nnx.split(model)
    self._state = state

    @jax.jit
    def pooled(state, tokens_BT, mask_BT):
      h_BTD = nnx.merge(graphdef, state).hidden_states(tokens_BT)
      mask_BT1 = mask_BT[..., None].astype(jnp.float32)
      summed_BD = (h_BTD.astype(jnp.float32) * mask_BT1).sum(axis=1)
      return summed_BD / jnp.maximum(mask_BT1.sum(axis=1), 1.0)

    self._pooled = pooled

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> "Phi1Embedder":
    """Model + tokenizer from a params export, a training workdir, or an HF `save_pretrained` dir
    (phi-1 itself, any PhiForCausalLM or CodeGenForCausalLM), via
    `phi1.checkpoint.load_for_inference`."""
    from phi1 import checkpoint  # lazy: pulls JAX
    model, tokenizer = checkpoint.load_for_inference(path)
    return cls(model, tokenizer.encode, name=f"phi1:{path}", **kwargs)

  @classmethod
  def random(cls, preset: str = "tiny", seed: int = 0, **kwargs) -> "Phi1Embedder":
    """An untrained model of a preset size with a byte encoder: measures embedding throughput
    (bench/filtering.py) without a checkpoint; its vectors carry no meaning."""
    from flax import nnx
    from phi1.model import Phi1, Phi1Config
    config = getattr(Phi1Config, preset)()
    model = Phi1(config, rngs=nnx.Rngs(seed))
    return cls(model, byte_encoder(config.vocab_size), name=f"phi1-random:{preset}", **kwargs)

  def _token_ids(self, text: str) -> list[int]:
    ids = self.encode(text)[: self.buckets[-1]]
    if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
      raise ValueError(f"tokenizer produced ids outside the model's vocabulary [0, {self.vocab_size})")
    return ids

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    token_lists = [self._token_ids(t) for t in texts]
    order = np.argsort([len(t) for t in token_lists], kind="stable")
    out = np.zeros((len(texts), self.dim), np.float32)
    for start in range(0, len(order), self.batch_size):
      idx = order[start:start + self.batch_size]
      longest = max(1, max(len(token_lists[i]) for i in idx))
      T = next(b for b in self.buckets if b >= longest)
      # Full batches only: a short last batch is padded with empty rows so shapes stay static.
      tokens_BT = np.full((self.batch_size, T), self.pad_id, np.int32)
      mask_BT = np.zeros((self.batch_size, T), np.int32)
      for row, i in enumerate(idx):
        ids = token_lists[i]
        tokens_BT[row, :len(ids)] = ids
        mask_BT[row, :len(ids)] = 1
      pooled_BD = np.asarray(self._pooled(self._state, tokens_BT, mask_BT))
      out[idx] = pooled_BD[:len(idx)]
    return l2_normalise(out)


def byte_encoder(vocab_size: int) -> Callable[[str], list[int]]:
  """UTF-8 bytes folded into [0, vocab_size): for random tiny models in tests, not for real use."""
  return lambda text: [b % vocab_size for b in text.encode("utf-8")]


class SentenceTransformerEmbedder:
  """Optional extra: `pip install sentence-transformers`."""

  def __init__(self, model_name: str, batch_size: int = 32):
    try:
      from sentence_transformers import SentenceTransformer
    except ImportError as e:
      raise ImportError("the sentence-transformers embedder needs `pip install "
                        "sentence-transformers`; or use 'hashing' or 'phi1-hf:DIR'") from e
    self._model = SentenceTransformer(model_name)
    self.name = f"sentence-transformers:{model_name}"
    self.dim = int(self._model.get_sentence_embedding_dimension())
    self.batch_size = batch_size

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    x = self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True)
    return l2_normalise(np.asarray(x, np.float32))


def check_codegen_dir(path: str) -> None:
  """Raises a one-line error unless `path` is a CodeGenForCausalLM save_pretrained directory with
  its tokenizer (checked before a run spends hours and labels on reaching the embed stage)."""
  import json
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    raise FileNotFoundError(
        f"no CodeGen model at {path!r}: the paper embeds with CodeGen-350M-mono; save it there with "
        "transformers (CodeGenForCausalLM and its tokenizer, save_pretrained), pass --embedder "
        "codegen:DIR, or use --preset cpu")
  with open(config) as f:
    model_type = json.load(f).get("model_type")
  if model_type != "codegen":
    raise ValueError(f"{config} is a {model_type!r} model, not CodeGen; use --embedder phi1:{path}")
  if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json",)):
    raise FileNotFoundError(f"no tokenizer.json beside the CodeGen model in {path}: save its "
                            "tokenizer there too (AutoTokenizer.save_pretrained)")


def check_spec(spec: str) -> None:
  """What can be checked of an embedder spec without loading a model."""
  kind, _, arg = spec.partition(":")
  if kind == "codegen":
    check_codegen_dir(arg)
  elif kind in ("phi1", "phi1-hf") and not os.path.exists(arg):
    raise FileNotFoundError(f"embedder checkpoint {arg!r} not found")
  elif kind not in ("hashing", "phi1-random", "sentence-transformers", "phi1", "phi1-hf"):
    make_embedder(spec)  # the unknown-kind error


def spec_fingerprint(spec: str) -> str:
  """`spec` as a result's key holds it: a checkpoint directory by the weights it holds
  (phi1.fingerprint.of_weights), not where it lies, so a retrained checkpoint at the same path
  re-embeds and a moved one does not. Specs that name no files stay as they are."""
  kind, _, arg = spec.partition(":")
  if kind in ("codegen", "phi1", "phi1-hf") and arg:
    from phi1 import fingerprint
    return f"{kind}:weights {fingerprint.of_weights(arg)}"
  return spec


def make_embedder(spec: str) -> Embedder:
  """'codegen:DIR' | 'phi1:DIR' | 'hashing[:DIM]' | 'sentence-transformers:NAME' |
  'phi1-random:PRESET'."""
  kind, _, arg = spec.partition(":")
  if kind == "codegen":
    check_codegen_dir(arg)
    embedder = Phi1Embedder.from_checkpoint(arg)
    embedder.name = f"codegen:{arg}"
    return embedder
  if kind == "hashing":
    return HashingEmbedder(int(arg) if arg else 1024)
  if kind in ("phi1", "phi1-hf"):
    if not arg:
      raise ValueError("the phi1 embedder needs a checkpoint: 'phi1:DIR' (params export, training "
                       "workdir, or an HF save_pretrained directory)")
    return Phi1Embedder.from_checkpoint(arg)
  if kind == "phi1-random":
    return Phi1Embedder.random(arg or "tiny")
  if kind == "sentence-transformers":
    return SentenceTransformerEmbedder(arg or "all-MiniLM-L6-v2")
  raise ValueError(f"unknown embedder {spec!r}; use 'codegen:DIR', 'phi1:DIR', 'hashing[:DIM]', "
                   f"'sentence-transformers:NAME' or 'phi1-random:PRESET'")
