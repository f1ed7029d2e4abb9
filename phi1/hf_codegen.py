"""CodeGen checkpoints (`CodeGenForCausalLM`) as phi models: config and tensor-name translation.

phi-1 is a CodeGen-style model (parallel block, partial rotary; paper §2.3), and the paper's
quality filter embeds code with a pretrained CodeGen (§2.1). A CodeGen checkpoint is our block with
GPT-J interleaved rotary, no attention biases and a fused q/v/k projection; `phi1.hf` reads and
writes it through this translation to and from the HF Phi tensor names it already knows:

  transformer.wte.weight                 model.embed_tokens.weight
  transformer.h.{i}.ln_1                 model.layers.{i}.input_layernorm
  transformer.h.{i}.attn.qkv_proj        model.layers.{i}.self_attn.{q,k,v}_proj (see _qkv_rows)
  transformer.h.{i}.attn.out_proj        model.layers.{i}.self_attn.dense
  transformer.h.{i}.mlp.fc_in / fc_out   model.layers.{i}.mlp.fc1 / fc2
  transformer.ln_f                       model.final_layernorm
  lm_head                                lm_head
"""

import numpy as np

from phi1.model import Phi1Config

# CodeGen was trained on 4 model-parallel shards and its fused projection keeps that layout
# (transformers' CodeGenAttention.mp_num).
MP_NUM = 4
# Buffers older CodeGen exports saved; they carry no learned weights.
IGNORED_SUFFIXES = (".attn.causal_mask", ".attn.masked_bias")
_RENAMES = (  # (CodeGen prefix, Phi prefix), tried in order
    ("transformer.wte.", "model.embed_tokens."),
    ("transformer.ln_f.", "model.final_layernorm."),
    ("lm_head.", "lm_head."),
)
_BLOCK_RENAMES = {"ln_1": "input_layernorm", "attn.out_proj": "self_attn.dense",
                  "mlp.fc_in": "mlp.fc1", "mlp.fc_out": "mlp.fc2"}


def config_from_codegen(hf: dict, **overrides) -> Phi1Config:
  """`Phi1Config` from a transformers `CodeGenConfig` dict (config.json)."""
  act = hf.get("activation_function", "gelu_new")
  if act not in ("gelu_new", "gelu_pytorch_tanh"):
    raise ValueError(f"activation_function={act!r} is not supported; CodeGen uses gelu_new")
  if hf.get("tie_word_embeddings", False):
    raise ValueError("tie_word_embeddings=true is not supported: CodeGen's LM head is untied")
  if hf.get("rotary_dim") is None:
    raise ValueError("rotary_dim=null is not supported: set it in config.json (CodeGen models "
                     "rotate part of each head, e.g. 32 of 64 dims)")
  d_model = hf["n_embd"]
  if d_model % MP_NUM:
    raise ValueError(f"n_embd={d_model} must be divisible by {MP_NUM}: CodeGen's fused qkv_proj "
                     f"is laid out in {MP_NUM} shards")
  fields = dict(
      vocab_size=hf["vocab_size"], d_model=d_model, n_layers=hf["n_layer"], n_heads=hf["n_head"],
      d_ff=hf.get("n_inner") or 4 * d_model, rotary_dim=hf["rotary_dim"],
      rope_theta=10000.0,  # fixed in CodeGen (create_sinusoidal_positions)
      max_seq_len=hf.get("n_positions", 2048), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      embd_dropout=float(hf.get("embd_pdrop") or 0.0),
      attn_dropout=float(hf.get("attn_pdrop") or 0.0),
      resid_dropout=float(hf.get("resid_pdrop") or 0.0),
      init_std=hf.get("initializer_range", 0.02), rotary_style="gptj", attn_bias=False)
  return Phi1Config(**{**fields, **overrides})


def config_to_codegen(config: Phi1Config, eos_id: int | None) -> dict:
  """The config.json transformers needs to build the same `CodeGenForCausalLM`."""
  if config.rope_theta != 10000.0:
    raise ValueError(f"rope_theta={config.rope_theta} cannot be written as CodeGen, whose rotary "
                     "base is fixed at 10000")
  if config.d_model % MP_NUM:
    raise ValueError(f"d_model={config.d_model} must be divisible by {MP_NUM} for CodeGen's "
                     "fused qkv_proj layout")
  return {
      "architectures": ["CodeGenForCausalLM"], "model_type": "codegen",
      "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": None,
      "vocab_size": config.vocab_size, "n_embd": config.d_model, "n_layer": config.n_layers,
      "n_head": config.n_heads, "n_inner": config.d_ff, "rotary_dim": config.rotary_dim,
      "n_positions": config.max_seq_len, "n_ctx": config.max_seq_len,
      "activation_function": "gelu_new", "layer_norm_epsilon": config.layer_norm_eps,
      "initializer_range": config.init_std, "resid_pdrop": config.resid_dropout,
      "embd_pdrop": config.embd_dropout, "attn_pdrop": config.attn_dropout,
      "tie_word_embeddings": False, "use_cache": True, "dtype": "float32",
  }


def _qkv_rows(d_model: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Rows of the fused [3D, D] qkv_proj weight holding each feature of q, k and v.

  CodeGenAttention views the fused output as [MP_NUM, 3 * L] (L = D/MP_NUM) and splits each shard
  into (q, v, k) of L features: feature j of q sits in shard j // L at offset j % L, and v and k
  follow it within the shard.
  """
  local = d_model // MP_NUM
  j = np.arange(d_model)
  base = (j // local) * 3 * local + j % local
  return base, base + 2 * local, base + local


def from_codegen_tensors(tensors: dict[str, np.ndarray], config: Phi1Config) -> dict:
  """CodeGen tensor names -> the HF Phi names `phi1.hf` maps onto the model (consumes `tensors`)."""
  q_rows, k_rows, v_rows = _qkv_rows(config.d_model)
  out = {}
  for name in list(tensors):
    array = tensors.pop(name)
    if name.endswith(".attn.qkv_proj.weight"):
      prefix = _block_prefix(name, "attn.qkv_proj.weight")
      for proj, rows in (("q_proj", q_rows), ("k_proj", k_rows), ("v_proj", v_rows)):
        out[f"{prefix}self_attn.{proj}.weight"] = array[rows]
      continue
    out[_rename(name)] = array
  return out


def to_codegen_tensors(tensors: dict[str, np.ndarray], config: Phi1Config) -> dict:
  """HF Phi tensor names (attention without biases) -> a CodeGen checkpoint's tensors."""
  q_rows, k_rows, v_rows = _qkv_rows(config.d_model)
  inverse = {phi: cg for cg, phi in _BLOCK_RENAMES.items()}
  out = {}
  for name, array in tensors.items():
    if ".self_attn." in name and not name.endswith("self_attn.dense.weight"):
      if name.endswith("q_proj.weight"):
        prefix = name[:-len("self_attn.q_proj.weight")].replace("model.layers.", "transformer.h.")
        fused = np.empty((3 * config.d_model, config.d_model), array.dtype)
        for proj, rows in (("q_proj", q_rows), ("k_proj", k_rows), ("v_proj", v_rows)):
          fused[rows] = tensors[name.replace("q_proj", proj)]
        out[prefix + "attn.qkv_proj.weight"] = fused
      continue
    for cg, phi in _RENAMES:
      if name.startswith(phi):
        out[cg + name[len(phi):]] = array
        break
    else:
      layer, sub = name[len("model.layers."):].split(".", 1)
      module, leaf = sub.rsplit(".", 1)
      out[f"transformer.h.{layer}.{inverse[module]}.{leaf}"] = array
  return out


def _block_prefix(name: str, suffix: str) -> str:
  return name[:-len(suffix)].replace("transformer.h.", "model.layers.")


def _rename(name: str) -> str:
  for cg, phi in _RENAMES:
    if name.startswith(cg):
      return phi + name[len(cg):]
  if name.startswith("transformer.h."):
    layer, sub = name[len("transformer.h."):].split(".", 1)
    for cg, phi in _BLOCK_RENAMES.items():
      if sub.startswith(cg + "."):
        return f"model.layers.{layer}.{phi}{sub[len(cg):]}"
  return name  # unknown: left as is, so the loader reports it as unexpected
