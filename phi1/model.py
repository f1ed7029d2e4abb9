"""The phi-1 decoder in Flax NNX (Gunasekar et al. 2023, arXiv 2306.11644, §2.3).

Shape legend (nanodo style), used in every name and einsum below:
  B batch, T query length, S key length, D d_model, H heads, K head dim, F MLP inner dim, V vocab.

Block (CodeGen / GPT-J "parallel" layout, as in HF `PhiDecoderLayer`):
  h = LN(x);  x = x + dropout(attn(h)) + dropout(mlp(h))
with partial rotary embeddings (first `rotary_dim` of the K head dims, NeoX half-split), gelu_new
(tanh approximation), biases on every linear, a final LayerNorm and an untied LM head with a bias.
CodeGen, phi-1's ancestor (and the paper's embedder, §2.1), is the same block with GPT-J
interleaved rotary and no attention biases: `rotary_style="gptj"`, `attn_bias=False`.

Every parameter carries `logical_axes` metadata and every large activation passes through
`sharding.constrain` with logical names; `phi1/sharding.py` alone maps those names to the mesh.

Extending: a block's attention and MLP are picked by name, `Phi1Config.attention` from
`ATTENTIONS` and `Phi1Config.mlp` from `MLPS` (names in config.json, so sweeps and the config hash
tell variants apart). A variant is a module built as `cls(config, rngs)` inside `Block`, so it is
stacked and scanned like the stock one under `scan_layers` (swapping modules into a built model is
not: the scanned stack is one module). To add an attention variant:
    class MyAttention(model.Attention):      # project -> rotate -> attend: override one step
      def rotate(self, q_BTHK, k_BTHK, positions_BT): ...
    model.register_attention("mine", MyAttention)
    config.model.attention = "mine"          # or Phi1Config(attention="mine")
(`register_mlp` likewise). The registering module must be imported wherever the model is rebuilt
(a checkpoint loader too). `Phi1.capture` returns sown attention probabilities and per-layer
outputs (off, and free, unless asked for); `scan_layers` runs one compiled block under `nnx.scan`
instead of n_layers copies.
"""

import dataclasses
import functools
import jax
import jax.numpy as jnp
from flax import nnx

from phi1 import attention as attention_lib
from phi1 import sharding

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "dots", "full")
ROTARY_STYLES = ("neox", "gptj")
MLP_KINDS = ("gelu", "swiglu")  # the built-in keys of MLPS, defined below the classes


@dataclasses.dataclass(frozen=True)
class Phi1Config:
  """Model hyper-parameters. Field names are a user-facing contract (experiment configs set them)."""
  vocab_size: int = 51200
  d_model: int = 2048
  n_layers: int = 24
  n_heads: int = 32
  d_ff: int = 8192
  rotary_dim: int = 32
  rope_theta: float = 10000.0
  max_seq_len: int = 2048
  # "neox" rotates the halves (x[:R/2], x[R/2:]) of the rotary dims (phi-1, HF Phi); "gptj" rotates
  # interleaved pairs (x[2i], x[2i+1]) (CodeGen, GPT-J).
  rotary_style: str = "neox"
  attn_bias: bool = True  # biases on q/k/v and the output projection (phi-1 yes, CodeGen no)
  layer_norm_eps: float = 1e-5
  # The paper trains with attention and residual dropout 0.1 (§2.3); the released config uses 0.
  # Attention dropout runs on the "xla" and "pallas" paths (one hashed mask, phi1/attention.py).
  embd_dropout: float = 0.0
  attn_dropout: float = 0.0
  resid_dropout: float = 0.0
  attention_impl: str = "xla"  # "xla" | "pallas" | "cudnn" | "auto" (pallas on GPU, else xla)
  dtype: str = "float32"  # compute dtype; parameters stay float32 (see phi1/precision.py)
  remat: str = "none"  # "none" | "dots" | "full": activation recomputation per block
  init_std: float = 0.02  # HF PhiConfig.initializer_range
  mlp: str = "gelu"  # phi-1's fc1 -> gelu_new -> fc2; "swiglu" is the gated variant (MLPS)
  attention: str = "mha"  # phi-1's multi-head self-attention; variants register in ATTENTIONS
  scan_layers: bool = False  # one block compiled once and scanned over stacked layer params

  @classmethod
  def phi1(cls, **overrides) -> "Phi1Config":
    """phi-1, 1.3B: 24 layers, d 2048, 32 heads x 64, MLP 8192, rotary 32 (paper §2.3)."""
    return cls(**overrides)

  @classmethod
  def phi1_small(cls, **overrides) -> "Phi1Config":
    """phi-1-small, 350M: 20 layers, d 1024, 16 heads x 64, MLP 4096 (paper §2.3)."""
    return cls(**{**dict(d_model=1024, n_layers=20, n_heads=16, d_ff=4096), **overrides})

  @classmethod
  def tiny(cls, **overrides) -> "Phi1Config":
    """A few-MB model with the same block, for tests and the CPU demo (head dim 32, rotary 16)."""
    base = dict(vocab_size=512, d_model=128, n_layers=2, n_heads=4, d_ff=512, rotary_dim=16,
                max_seq_len=256)
    return cls(**{**base, **overrides})

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
    if self.rotary_dim % 2 or not 0 <= self.rotary_dim <= self.head_dim:
      raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= head_dim={self.head_dim}")
    if self.rotary_style not in ROTARY_STYLES:
      raise ValueError(f"rotary_style must be one of {ROTARY_STYLES}, got {self.rotary_style!r}")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
    if self.mlp not in MLPS:
      raise ValueError(f"mlp must be one of {tuple(MLPS)} (register_mlp adds one), "
                       f"got {self.mlp!r}")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention must be one of {tuple(ATTENTIONS)} (register_attention adds "
                       f"one), got {self.attention!r}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if self.attention_impl not in attention_lib.IMPLS:
      raise ValueError(f"attention_impl must be one of {attention_lib.IMPLS}, "
                       f"got {self.attention_impl!r}")
    if self.attn_dropout > 0 and self.attention_impl == "cudnn":
      raise ValueError(f"attn_dropout={self.attn_dropout} is not available with "
                       "attention_impl='cudnn' (jax.nn.dot_product_attention has no dropout); use "
                       "attention_impl='pallas' (or 'auto'/'xla'), or set attn_dropout=0")


def _linear(d_in, d_out, axes, config, rngs, use_bias=True):
  return nnx.Linear(
      d_in, d_out, use_bias=use_bias, dtype=DTYPES[config.dtype], param_dtype=jnp.float32,
      kernel_init=nnx.initializers.normal(config.init_std), rngs=rngs,
      kernel_metadata={"logical_axes": axes}, bias_metadata={"logical_axes": axes[1:]})


def _layer_norm(config, rngs):
  # LayerNorm statistics in fp32 whatever the compute dtype (the mean/var of bf16 is too coarse).
  return nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps, dtype=jnp.float32,
                       param_dtype=jnp.float32, rngs=rngs,
                       scale_metadata={"logical_axes": ("norm",)},
                       bias_metadata={"logical_axes": ("norm",)})


def rotary(x_BTHK, positions_BT, rotary_dim: int, theta: float, style: str = "neox"):
  """Rotary embedding on the first `rotary_dim` dims; the rest pass through.

  Frequency i rotates the pair (x[i], x[i + R/2]) under "neox" (HF Phi) and (x[2i], x[2i+1]) under
  "gptj" (CodeGen): the same rotation applied to a permutation of the rotary dims.
  """
  if rotary_dim == 0:
    return x_BTHK
  half = rotary_dim // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  angles_BTR = positions_BT.astype(jnp.float32)[..., None] * inv_freq  # R = rotary_dim / 2
  cos_BT1R = jnp.cos(angles_BTR)[:, :, None, :]
  sin_BT1R = jnp.sin(angles_BTR)[:, :, None, :]
  x_rot = x_BTHK[..., :rotary_dim].astype(jnp.float32)
  if style == "gptj":
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    rotated = jnp.stack([x1 * cos_BT1R - x2 * sin_BT1R, x2 * cos_BT1R + x1 * sin_BT1R], -1)
    rotated = rotated.reshape(x_rot.shape)
  else:
    x1, x2 = x_rot[..., :half], x_rot[..., half:]
    rotated = jnp.concatenate([x1 * cos_BT1R - x2 * sin_BT1R, x2 * cos_BT1R + x1 * sin_BT1R], -1)
  return jnp.concatenate([rotated.astype(x_BTHK.dtype), x_BTHK[..., rotary_dim:]], axis=-1)


class Attention(nnx.Module):
  """Self-attention as three overridable steps: `project` (x -> q, k, v), `rotate` (positions),
  `attend` (softmax attention or a KV cache), then the `dense` output projection."""

  def __init__(self, config: Phi1Config, rngs: nnx.Rngs):
    self.config = config
    D = config.d_model
    bias = config.attn_bias
    self.q_proj = _linear(D, D, ("embed", "heads"), config, rngs, bias)
    self.k_proj = _linear(D, D, ("embed", "heads"), config, rngs, bias)
    self.v_proj = _linear(D, D, ("embed", "heads"), config, rngs, bias)
    self.dense = _linear(D, D, ("heads", "embed"), config, rngs, bias)
    self.deterministic = False  # toggled by model.train() / model.eval()
    self.sow_intermediates = False  # toggled by Phi1.capture

  def project(self, x_BTD):
    """(q, k, v), each [B, T, H, K]."""
    c = self.config
    B, T, _ = x_BTD.shape
    split = lambda y: sharding.constrain(y.reshape(B, T, c.n_heads, c.head_dim),
                                         ("batch", "seq", "act_heads", "head_dim"))
    return split(self.q_proj(x_BTD)), split(self.k_proj(x_BTD)), split(self.v_proj(x_BTD))

  def rotate(self, q_BTHK, k_BTHK, positions_BT):
    c = self.config
    return (rotary(q_BTHK, positions_BT, c.rotary_dim, c.rope_theta, c.rotary_style),
            rotary(k_BTHK, positions_BT, c.rotary_dim, c.rope_theta, c.rotary_style))

  def attend(self, q_BTHK, k_BTHK, v_BTHK, segment_ids_BT, cache=None, rngs=None):
    """(out_BTHK, new_cache): attention over this call's keys, or over the cache when decoding."""
    c = self.config
    if cache is not None:
      cache = cache.update(k_BTHK, v_BTHK, segment_ids_BT)
      return cache.attend(q_BTHK), cache
    dropout = c.attn_dropout if not self.deterministic else 0.0
    dropout_rng = _dropout_key(rngs) if dropout > 0 else None
    if self.sow_intermediates and attention_lib.resolve_impl(c.attention_impl) == "xla":
      T = q_BTHK.shape[1]
      mask = attention_lib.attention_mask(segment_ids_BT, True, T, T)
      out_BTHK, probs_BHTS = attention_lib.xla_attention(
          q_BTHK, k_BTHK, v_BTHK, mask, dropout_rate=dropout, dropout_rng=dropout_rng,
          return_probs=True)
      self.sow(nnx.Intermediate, "attention_probs", probs_BHTS)
      return out_BTHK, cache
    out_BTHK = attention_lib.attention(
        q_BTHK, k_BTHK, v_BTHK, causal=True, segment_ids=segment_ids_BT,
        impl=c.attention_impl, dropout_rate=dropout, dropout_rng=dropout_rng)
    return out_BTHK, cache

  def __call__(self, x_BTD, positions_BT, segment_ids_BT, cache=None, rngs=None):
    """`cache` (decoding only) is a `LayerCache`; returns (out_BTD, new_cache)."""
    B, T, D = x_BTD.shape
    q_BTHK, k_BTHK, v_BTHK = self.project(x_BTD)
    q_BTHK, k_BTHK = self.rotate(q_BTHK, k_BTHK, positions_BT)
    out_BTHK, cache = self.attend(q_BTHK, k_BTHK, v_BTHK, segment_ids_BT, cache, rngs)
    return self.dense(out_BTHK.reshape(B, T, D)), cache


class MLP(nnx.Module):

  def __init__(self, config: Phi1Config, rngs: nnx.Rngs):
    self.fc1 = _linear(config.d_model, config.d_ff, ("embed", "mlp"), config, rngs)
    self.fc2 = _linear(config.d_ff, config.d_model, ("mlp", "embed"), config, rngs)

  def __call__(self, x_BTD):
    h_BTF = sharding.constrain(self.fc1(x_BTD), ("batch", "seq", "act_mlp"))
    return self.fc2(jax.nn.gelu(h_BTF, approximate=True))  # gelu_new is the tanh approximation


class SwiGLUMLP(nnx.Module):
  """w2(silu(w1 x) * w3 x) (Shazeer 2020, "GLU Variants Improve Transformer"; LLaMA's MLP). Not
  phi-1's: an ablation. Three matrices of d_ff, so d_ff = 2/3 of gelu's keeps the parameter count."""

  def __init__(self, config: Phi1Config, rngs: nnx.Rngs):
    self.w1 = _linear(config.d_model, config.d_ff, ("embed", "mlp"), config, rngs)
    self.w3 = _linear(config.d_model, config.d_ff, ("embed", "mlp"), config, rngs)
    self.w2 = _linear(config.d_ff, config.d_model, ("mlp", "embed"), config, rngs)

  def __call__(self, x_BTD):
    gate_BTF = sharding.constrain(self.w1(x_BTD), ("batch", "seq", "act_mlp"))
    up_BTF = sharding.constrain(self.w3(x_BTD), ("batch", "seq", "act_mlp"))
    return self.w2(jax.nn.silu(gate_BTF) * up_BTF)


MLPS = {"gelu": MLP, "swiglu": SwiGLUMLP}
assert tuple(MLPS) == MLP_KINDS
ATTENTIONS = {"mha": Attention}


def _register(registry: dict, kind: str, name: str, cls):
  if registry.get(name, cls) is not cls:
    raise ValueError(f"{kind} {name!r} is already registered as {registry[name].__name__}; "
                     "pick another name")
  registry[name] = cls


# register_attention(name, cls): `Phi1Config(attention=name)` builds `cls(config, rngs)` as every
# block's attention (called as `Attention` is); register_mlp likewise for the MLP (x_BTD -> y_BTD).
register_attention = functools.partial(_register, ATTENTIONS, "attention")
register_mlp = functools.partial(_register, MLPS, "mlp")


class Block(nnx.Module):

  def __init__(self, config: Phi1Config, rngs: nnx.Rngs):
    self.input_layernorm = _layer_norm(config, rngs)
    self.self_attn = ATTENTIONS[config.attention](config, rngs)
    self.mlp = MLPS[config.mlp](config, rngs)
    self.resid_dropout = nnx.Dropout(config.resid_dropout)
    self.dtype = DTYPES[config.dtype]
    self.sow_intermediates = False  # toggled by Phi1.capture

  def __call__(self, x_BTD, positions_BT, segment_ids_BT, cache=None, rngs=None):
    h_BTD = self.input_layernorm(x_BTD).astype(self.dtype)
    attn_BTD, cache = self.self_attn(h_BTD, positions_BT, segment_ids_BT, cache, rngs)
    mlp_BTD = self.mlp(h_BTD)
    x_BTD = x_BTD + self.resid_dropout(attn_BTD, rngs=rngs) + self.resid_dropout(mlp_BTD, rngs=rngs)
    if self.sow_intermediates:
      self.sow(nnx.Intermediate, "output", x_BTD)  # the residual stream after this block
    return sharding.constrain(x_BTD, ("batch", "seq", "act_embed")), cache


class Phi1(nnx.Module):
  """phi-1 decoder: `model(tokens_BT, segment_ids=None, positions=None) -> logits_BTV` (float32).

  Dropout randomness is passed per call (`rngs=nnx.Rngs(dropout=key)`), not stored in the model, so
  a training step is a pure function of (params, batch, key) and resumes exactly.
  """

  def __init__(self, config: Phi1Config, *, rngs: nnx.Rngs):
    self.config = config
    self.embed_tokens = nnx.Embed(
        config.vocab_size, config.d_model, dtype=DTYPES[config.dtype], param_dtype=jnp.float32,
        embedding_init=nnx.initializers.normal(config.init_std), rngs=rngs,
        embedding_metadata={"logical_axes": ("vocab", "embed")})
    self.embd_dropout = nnx.Dropout(config.embd_dropout)
    if config.scan_layers:
      self.layers = _stacked_blocks(config, rngs)
    else:
      self.layers = nnx.List([Block(config, rngs) for _ in range(config.n_layers)])
    self.final_layernorm = _layer_norm(config, rngs)
    self.lm_head = _linear(config.d_model, config.vocab_size, ("embed", "vocab"), config, rngs)

  def _check_inputs(self, tokens_BT, segment_ids, positions):
    c = self.config
    if tokens_BT.ndim != 2 or not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
      raise ValueError(f"tokens must be an integer [batch, seq] array; got dtype {tokens_BT.dtype} "
                       f"shape {tokens_BT.shape}")
    if tokens_BT.shape[1] > c.max_seq_len:
      raise ValueError(f"sequence length {tokens_BT.shape[1]} exceeds the model context "
                       f"max_seq_len={c.max_seq_len}: truncate or split the input")
    for name, arr in (("segment_ids", segment_ids), ("positions", positions)):
      if arr is not None and arr.shape != tokens_BT.shape:
        raise ValueError(f"{name} shape {arr.shape} must equal tokens shape {tokens_BT.shape}")
    if not isinstance(tokens_BT, jax.core.Tracer):
      # Concrete tokens closed over inside a jit would otherwise be staged into tracers here.
      with jax.ensure_compile_time_eval():
        lo, hi = int(tokens_BT.min()), int(tokens_BT.max())
      if lo < 0 or hi >= c.vocab_size:
        raise ValueError(f"token ids must lie in [0, {c.vocab_size}); got range [{lo}, {hi}]. "
                         "Is the tokenizer's vocabulary larger than the model's vocab_size?")

  def hidden_states(self, tokens_BT, segment_ids=None, positions=None, cache=None, *, rngs=None):
    """Final-LayerNorm output h_BTD (float32); with `cache`, returns (h_BTD, new_cache)."""
    self._check_inputs(tokens_BT, segment_ids, positions)
    B, T = tokens_BT.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    x_BTD = self.embd_dropout(self.embed_tokens(tokens_BT), rngs=rngs)
    x_BTD = sharding.constrain(x_BTD.astype(jnp.float32), ("batch", "seq", "act_embed"))
    if self.config.scan_layers and cache is None:
      return self.final_layernorm(self._scan_blocks(x_BTD, positions, segment_ids, rngs))
    new_layers = []
    for i, block in enumerate(self.blocks()):
      layer_cache = None if cache is None else cache.layer(i)
      if cache is None and self.config.remat != "none":
        x_BTD, _ = _remat(self.config.remat)(block, x_BTD, positions, segment_ids, None, rngs)
      else:
        x_BTD, layer_cache = block(x_BTD, positions, segment_ids, layer_cache, rngs)
      new_layers.append(layer_cache)
    h_BTD = self.final_layernorm(x_BTD)
    if cache is None:
      return h_BTD
    return h_BTD, cache.replace_layers(new_layers, advance=T)

  def blocks(self):
    """The blocks in order, as separate modules (one slice each of a scanned stack)."""
    if not self.config.scan_layers:
      return list(self.layers)
    graphdef, state = nnx.split(self.layers)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
            for i in range(self.config.n_layers)]

  def _scan_blocks(self, x_BTD, positions, segment_ids, rngs):
    """All blocks as one `nnx.scan` over the stacked parameters: XLA compiles one block, not
    n_layers copies. Each layer draws its dropout key from one split of the step's key."""
    c = self.config
    keys = None if rngs is None else jax.random.split(rngs.dropout(), c.n_layers)

    def one_block(x_BTD, block, key):
      block_rngs = None if key is None else nnx.Rngs(dropout=key)
      if c.remat != "none":
        x_BTD, _ = _remat(c.remat)(block, x_BTD, positions, segment_ids, None, block_rngs)
      else:
        x_BTD, _ = block(x_BTD, positions, segment_ids, None, block_rngs)
      return x_BTD

    scan = nnx.scan(one_block, in_axes=(nnx.Carry, 0, None if keys is None else 0),
                    out_axes=nnx.Carry)
    return scan(x_BTD, self.layers, keys)

  def capture(self, tokens_BT, segment_ids=None, positions=None):
    """(logits_BTV, intermediates) of one forward pass, through NNX's `sow` / `nnx.capture`.

    `intermediates["layers"][i]["output"]` is block i's residual-stream output [B, T, D], and
    with attention_impl="xla", `intermediates["layers"][i]["self_attn"]["attention_probs"]` is its
    softmax [B, H, T, S] (fp32, before dropout). Each is a tuple with one entry per call. The flag
    that turns sowing on is set only for this call, so training never pays for it."""
    if self.config.scan_layers:
      raise ValueError("capture needs unrolled layers: build the model with scan_layers=False "
                       "(the parameters are the same, only stacked)")
    self.set_attributes(sow_intermediates=True, raise_if_not_found=False)
    try:
      return nnx.capture(self, nnx.Intermediate)(tokens_BT, segment_ids, positions)
    finally:
      self.set_attributes(sow_intermediates=False, raise_if_not_found=False)

  def logits(self, h_BTD):
    # The LM head may run in bf16/fp16 but accumulates and returns fp32: the loss needs fp32 logits.
    kernel, bias = self.lm_head.kernel[...], self.lm_head.bias[...]
    dtype = DTYPES[self.config.dtype]
    logits_BTV = jnp.einsum("btd,dv->btv", h_BTD.astype(dtype), kernel.astype(dtype),
                            preferred_element_type=jnp.float32) + bias
    return sharding.constrain(logits_BTV, ("batch", "seq", "act_vocab"))

  def __call__(self, tokens_BT, segment_ids=None, positions=None, *, rngs=None):
    return self.logits(self.hidden_states(tokens_BT, segment_ids, positions, rngs=rngs))


def _dropout_key(rngs):
  if rngs is None:
    raise ValueError("attention dropout is on: call the model with rngs=nnx.Rngs(dropout=key), "
                     "or model.eval() to turn dropout off")
  return rngs.dropout()


def _stacked_blocks(config: Phi1Config, rngs: nnx.Rngs) -> Block:
  """One Block whose parameters carry a leading [n_layers] axis (logical name "layers")."""

  @nnx.split_rngs(splits=config.n_layers)
  @nnx.vmap(in_axes=0, out_axes=0)
  def make(rngs):
    return Block(config, rngs)

  stacked = make(rngs)
  for _, var in nnx.iter_graph(stacked):
    if isinstance(var, nnx.Param):
      var.set_metadata("logical_axes", ("layers", *var.get_metadata()["logical_axes"]))
  return stacked


def _remat(policy: str):
  """Recompute a block's activations in the backward pass ("dots" keeps matmul outputs)."""
  jax_policy = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
  return nnx.remat(lambda block, *args: block(*args), policy=jax_policy[policy])


def count_params(config: Phi1Config) -> int:
  """Exact parameter count without allocating: the abstract model's parameters (what
  phi1/flops.py's param_counts totals for any model_fn; it imports this module, not the reverse)."""
  abstract = nnx.eval_shape(lambda: Phi1(config, rngs=nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
