"""Import and export of Hugging Face Phi and CodeGen checkpoints, torch-free.

A checkpoint is a directory written by `transformers.PhiForCausalLM.save_pretrained` (or
`CodeGenForCausalLM`'s, translated by `phi1/hf_codegen.py`; config.json's model_type says which):
`config.json`
plus `model.safetensors`, or several shards listed in `model.safetensors.index.json`. Tensors are
read with the `safetensors` library; PyTorch `Linear` weights are [out, in] and our kernels are
[in, out], so those are transposed. Names (HF PhiForCausalLM):

  model.embed_tokens.weight                          embed_tokens.embedding
  model.layers.{i}.input_layernorm.{weight,bias}     layers.{i}.input_layernorm.{scale,bias}
  model.layers.{i}.self_attn.{q,k,v}_proj / dense    layers.{i}.self_attn.<same>.{kernel,bias}
  model.layers.{i}.mlp.{fc1,fc2}                     layers.{i}.mlp.<same>.{kernel,bias}
  model.final_layernorm.{weight,bias}                final_layernorm.{scale,bias}
  lm_head.{weight,bias}                              lm_head.{kernel,bias}
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from phi1 import atomic, hf_codegen
from phi1 import layer_layout
from phi1.model import Phi1, Phi1Config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# gelu_new and gelu_pytorch_tanh are the same tanh approximation (our MLP's activation).
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
# Buffers some exporters save that carry no learned weights (we recompute rotary frequencies).
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",) + hf_codegen.IGNORED_SUFFIXES


class CheckpointError(ValueError):
  """A checkpoint directory is missing files, holds corrupt ones, or does not match its config."""


def config_from_hf(hf: dict, **overrides) -> Phi1Config:
  """`Phi1Config` from a transformers `PhiConfig` or `CodeGenConfig` dict (config.json); refuses
  what we cannot run."""
  if hf.get("model_type") == "codegen":
    return hf_codegen.config_from_codegen(hf, **overrides)
  if hf.get("model_type", "phi") != "phi":
    raise ValueError(f"config.json model_type={hf['model_type']!r}: only 'phi' (PhiForCausalLM) "
                     "and 'codegen' (CodeGenForCausalLM) are supported; old 'phi-msft' "
                     "checkpoints must first be converted by transformers")
  # transformers >= 5 nests rotary settings in `rope_parameters`; 4.x (and the released phi-1
  # config.json) keeps them at the top level with `rope_scaling`.
  rope = dict(hf.get("rope_parameters") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  scaling = hf.get("rope_scaling")
  if rope_type != "default" or scaling:
    raise ValueError(f"rope scaling is not supported (rope_parameters.rope_type={rope_type!r}, "
                     f"rope_scaling={scaling!r}); phi-1 uses plain rotary embeddings")
  if hf.get("qk_layernorm", False):
    raise ValueError("qk_layernorm=true is not supported: phi-1 has no LayerNorm on queries/keys")
  n_heads = hf["num_attention_heads"]
  kv_heads = hf.get("num_key_value_heads")
  if kv_heads is not None and kv_heads != n_heads:
    raise ValueError(f"num_key_value_heads={kv_heads} != num_attention_heads={n_heads}: "
                     "grouped-query attention is not supported (phi-1 uses full multi-head "
                     "attention)")
  act = hf.get("hidden_act", "gelu_new")
  if act not in SUPPORTED_ACTIVATIONS:
    raise ValueError(f"hidden_act={act!r} is not supported; phi-1 uses one of "
                     f"{SUPPORTED_ACTIVATIONS}")
  if hf.get("tie_word_embeddings", False):
    raise ValueError("tie_word_embeddings=true is not supported: phi-1's LM head is untied "
                     "(with a bias)")
  d_model = hf["hidden_size"]
  factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
  fields = dict(
      vocab_size=hf["vocab_size"], d_model=d_model, n_layers=hf["num_hidden_layers"],
      n_heads=n_heads, d_ff=hf["intermediate_size"],
      rotary_dim=int(d_model // n_heads * factor),
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
      max_seq_len=hf.get("max_position_embeddings", 2048),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
      embd_dropout=float(hf.get("embd_pdrop") or 0.0),
      attn_dropout=float(hf.get("attention_dropout") or 0.0),
      resid_dropout=float(hf.get("resid_pdrop") or 0.0),
      init_std=hf.get("initializer_range", 0.02))
  return Phi1Config(**{**fields, **overrides})


def hf_architecture(config: Phi1Config) -> str:
  """"phi" or "codegen": the transformers model that computes what `config` computes."""
  layout = (config.rotary_style, config.attn_bias)
  if layout == ("neox", True):
    return "phi"
  if layout == ("gptj", False):
    return "codegen"
  raise ValueError(f"rotary_style={config.rotary_style!r} with attn_bias={config.attn_bias} has no "
                   "transformers equivalent: use ('neox', True) for PhiForCausalLM or "
                   "('gptj', False) for CodeGenForCausalLM")


def config_to_hf(config: Phi1Config, eos_id: int | None = None) -> dict:
  """The config.json transformers needs to build the same `PhiForCausalLM` (or CodeGen model).

  The end-of-text id belongs to the tokenizer, not the model: without `eos_id` it is written as
  null, because PhiConfig's default (2) would make transformers' `generate` stop on token 2.
  """
  if hf_architecture(config) == "codegen":
    return hf_codegen.config_to_codegen(config, eos_id)
  factor = config.rotary_dim / config.head_dim
  return {
      # CodeGen's tokenizer (phi-1's) uses <|endoftext|> as both BOS and EOS.
      "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": None,
      "architectures": ["PhiForCausalLM"], "model_type": "phi",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "intermediate_size": config.d_ff, "num_hidden_layers": config.n_layers,
      "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_heads,
      "hidden_act": "gelu_new", "max_position_embeddings": config.max_seq_len,
      "layer_norm_eps": config.layer_norm_eps, "initializer_range": config.init_std,
      "resid_pdrop": config.resid_dropout, "embd_pdrop": config.embd_dropout,
      "attention_dropout": config.attn_dropout, "qk_layernorm": False,
      "tie_word_embeddings": False, "use_cache": True, "dtype": "float32",
      # Both spellings: transformers >= 5 reads rope_parameters, 4.x the top-level keys.
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta,
                          "partial_rotary_factor": factor},
      "partial_rotary_factor": factor, "rope_theta": config.rope_theta, "rope_scaling": None,
  }


def _hf_name(path: tuple) -> tuple[str, bool]:
  """HF tensor name for one of our parameter paths, and whether the tensor is transposed."""
  *module, leaf = [str(p) for p in path]
  prefix = "" if module[0] == "lm_head" else "model."
  hf_leaf = {"embedding": "weight", "scale": "weight", "kernel": "weight", "bias": "bias"}[leaf]
  return prefix + ".".join(module + [hf_leaf]), leaf == "kernel"


def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {what}. Point at a directory written by "
                            "PhiForCausalLM.save_pretrained (config.json + model.safetensors)")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}); re-download or re-export it") from e


def _weight_files(path: str) -> list[str]:
  single, index = os.path.join(path, WEIGHTS_FILE), os.path.join(path, INDEX_FILE)
  if os.path.isfile(index):
    weight_map = _read_json(index, "sharded index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise CheckpointError(f"{index} has no 'weight_map'; re-download or re-export the checkpoint")
    files = sorted(set(weight_map.values()))
  elif os.path.isfile(single):
    files = [WEIGHTS_FILE]
  else:
    found = sorted(os.listdir(path))
    hint = (" (PyTorch .bin weights: re-save with safe_serialization=True)"
            if any(f.endswith(".bin") for f in found) else "")
    raise FileNotFoundError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {path} (found {found}){hint}")
  missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise FileNotFoundError(f"checkpoint shards listed in {INDEX_FILE} are missing from {path}: "
                            f"{missing}; the download or copy is incomplete")
  return [os.path.join(path, f) for f in files]


def _read_tensors(files: list[str]) -> dict[str, np.ndarray]:
  """All tensors as numpy arrays (bf16 via ml_dtypes: plain numpy has no bfloat16)."""
  tensors = {}
  for file in files:
    try:
      with safe_open(file, framework="np") as f:
        for name in f.keys():
          if f.get_slice(name).get_dtype() == "BF16":
            tensors[name] = None  # numpy loader cannot make bf16; read below through jax
          else:
            tensors[name] = f.get_tensor(name)
      if any(v is None for v in tensors.values()):
        with safe_open(file, framework="flax") as f:
          for name in f.keys():
            if tensors.get(name, 0) is None:
              tensors[name] = np.asarray(f.get_tensor(name))
    except SafetensorError as e:
      raise CheckpointError(f"{file} is not a readable safetensors file ({e}); it is corrupt or "
                            "truncated: re-download or re-export the checkpoint") from e
  return tensors


def _non_param_state(config: Phi1Config, seed: int):
  # Dropout RNG streams, built under jit so the (unused, dead-code-eliminated) parameter
  # initialisers never run: loading 1.3B weights should not first draw 1.3B random numbers.
  return jax.jit(lambda: nnx.state(Phi1(config, rngs=nnx.Rngs(seed)), nnx.Not(nnx.Param)))()


def from_hf(path: str, *, dtype: str = "float32", seed: int = 0, **config_overrides) -> Phi1:
  """Load a `PhiForCausalLM` or `CodeGenForCausalLM` save_pretrained directory as a `Phi1`
  (parameters float32).

  `dtype` is the compute dtype ("float32" | "bfloat16" | "float16"); other `Phi1Config` fields
  (e.g. `attention_impl`) may be overridden; `seed` seeds the dropout streams.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if config_overrides.get("scan_layers"):  # HF holds one tensor per layer: load, then stack
    config_overrides["scan_layers"] = False
    return layer_layout.stack_layers(from_hf(path, dtype=dtype, seed=seed, **config_overrides))
  config = config_from_hf(_read_json(os.path.join(path, CONFIG_FILE), "the model config"),
                          dtype=dtype, **config_overrides)
  tensors = _read_tensors(_weight_files(path))
  if hf_architecture(config) == "codegen":
    tensors = hf_codegen.from_codegen_tensors(tensors, config)
  abstract = nnx.eval_shape(lambda: Phi1(config, rngs=nnx.Rngs(seed)))
  graphdef, params, _ = nnx.split(abstract, nnx.Param, ...)
  flat, problems = [], []
  for key, var in nnx.to_flat_state(params):
    name, transpose = _hf_name(key)
    if name not in tensors:
      problems.append(f"missing tensor {name}")
      continue
    array = tensors.pop(name)  # pop: host copies are freed as device copies appear
    if (array.T if transpose else array).shape != var.shape:
      problems.append(f"{name} has shape {tuple(array.shape)}, config.json implies "
                      f"{tuple(var.shape)[::-1] if transpose else tuple(var.shape)}")
      continue
    flat.append((key, var.replace(jnp.asarray(array.T if transpose else array, dtype=var.dtype))))
  unexpected = sorted(n for n in tensors if not n.endswith(_IGNORED_SUFFIXES))
  if unexpected and not problems:
    problems.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  if problems:
    raise CheckpointError(f"checkpoint {path} does not match a model of its config.json: "
                          + "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else ""))
  return nnx.merge(graphdef, nnx.from_flat_state(flat), _non_param_state(config, seed))


def check_exportable(model) -> None:
  """Refuse (ValueError, one line naming the difference) a model transformers' Phi / CodeGen class
  would not compute: another MLP kind, a model_fn's class (its code is not in transformers), or
  parameters that are not exactly the stock model's (they would load MISSING / UNEXPECTED)."""
  config = model.config
  if type(model) is not Phi1:
    raise ValueError(f"the model is a {type(model).__module__}.{type(model).__qualname__} "
                     "(a model_fn variant): transformers' PhiForCausalLM / CodeGenForCausalLM "
                     "would load its weights into phi-1's blocks and compute another model; "
                     "only the stock Phi1 converts to HF")
  if config.mlp != "gelu":
    raise ValueError(f"MLP kind {config.mlp!r}: transformers' PhiForCausalLM has only phi-1's "
                     "fc1 -> gelu_new -> fc2 MLP (its gate weights would be dropped and fc1/fc2 "
                     "left random); only model.mlp='gelu' converts to HF")
  hf_architecture(config)  # the attention layout transformers has
  stock = nnx.eval_shape(lambda: Phi1(config, rngs=nnx.Rngs(0)))
  want = {k: v.shape for k, v in nnx.to_flat_state(nnx.state(stock, nnx.Param))}
  have = {k: v.shape for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  odd = sorted(set(want) ^ set(have), key=str) + sorted(
      (k for k in set(want) & set(have) if want[k] != have[k]), key=str)
  if odd:
    raise ValueError(f"the model's parameters differ from phi-1's ({'/'.join(map(str, odd[0]))}"
                     f"{f' and {len(odd) - 1} more' if len(odd) > 1 else ''}): transformers "
                     "would load them as missing / unexpected weights")


def to_hf(model: Phi1, path: str, *, eos_id: int | None = None) -> None:
  """Write `model` as config.json + model.safetensors for `PhiForCausalLM.from_pretrained`
  (`CodeGenForCausalLM` for a CodeGen-layout model, see `hf_architecture`).

  Refuses, before writing anything, a model that class cannot hold (`check_exportable`). Pass the
  tokenizer's `eos_id` so transformers' `generate` stops where ours does.
  """
  model = layer_layout.unstack_layers(model)  # a scanned model's stacked blocks: one per layer
  check_exportable(model)
  os.makedirs(path, exist_ok=True)
  tensors = {}
  for key, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name, transpose = _hf_name(key)
    array = np.asarray(jax.device_get(var.get_value()), dtype=np.float32)
    tensors[name] = np.ascontiguousarray(array.T if transpose else array)
  if hf_architecture(model.config) == "codegen":
    tensors = hf_codegen.to_codegen_tensors(tensors, model.config)
  # Write to temporary names and rename, so an interrupted export never leaves a half-written file
  # that looks like a checkpoint.
  for name, write in ((WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"})),
                      (CONFIG_FILE, lambda p: _write_json(config_to_hf(model.config, eos_id), p))):
    with atomic.replacing(os.path.join(path, name)) as tmp:
      write(tmp)


def _write_json(obj: dict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
