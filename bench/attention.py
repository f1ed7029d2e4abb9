"""Attention throughput: our Pallas flash kernel vs XLA, cuDNN and jax's bundled Pallas attention
(jax.experimental.pallas.ops.gpu.attention), forward and forward+backward.

Run on a GPU machine (one call, a few minutes on an H100):
  .venv/bin/python bench/attention.py
It first checks correctness on the device (outputs and q/k/v gradients of every impl against an
fp32 reference, packed documents included for pallas), then times phi-1's attention shape:
causal, seq 2048, head dim 64, 32 heads, batch 8, in bf16 and fp16, and once more with attention
dropout 0.1 (ours and XLA only: the peers have none). The last line is the JSON summary {"name",
"ours", "peer", "ratio", "unit", "machine", "peers"} with cuDNN as the peer (XLA when cuDNN is
unavailable) and "peers" holding ours / each peer. The target on an H100: pallas >= 3x xla and
>= 0.9x cuDNN, fwd+bwd.

FLOPs are the model's matmul FLOPs: 4*B*H*T*T*K forward (QK^T and PV), halved when causal, and
2.5x that for the backward (five matmuls to the forward's two); recomputation is not counted.

On CPU it refuses, except with --smoke: tiny shapes, pallas in interpret mode, to test the script.
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from phi1 import attention as attention_lib

IMPLS = ("xla", "cudnn", "jax_pallas", "pallas")  # jax_pallas: jax's bundled Triton kernel
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16}
# max |error| / max(max |reference|, 1) allowed against the fp32 reference.
TOLERANCE = {"bf16": 2e-2, "fp16": 5e-3}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--heads", type=int, default=32)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--dtypes", default="bf16,fp16")
  parser.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes, allowed on CPU (pallas in interpret mode): tests the script")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch, args.seq, args.heads, args.head_dim, args.iters = 1, 128, 2, 64, 2
  args.dtypes = args.dtypes.split(",")
  unknown = set(args.dtypes) - set(DTYPES)
  if unknown:
    parser.error(f"--dtypes takes a comma list of {sorted(DTYPES)}, got {sorted(unknown)}")
  return args


def machine() -> str:
  device = jax.devices()[0]
  return f"{device.device_kind} ({jax.default_backend()}), jax {jax.__version__}"


def random_inputs(shape, dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)


def packed_segment_ids(B, T):
  """Three documents of uneven length and a little padding per row."""
  bounds = np.array([0, T // 5, T // 2 + 7, T - T // 16])
  ids = np.zeros((B, T), np.int32)
  for doc, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
    ids[:, start:end] = doc + 1
  return jnp.asarray(ids)


def attend(impl, q, k, v, segment_ids=None, dropout_rate=0.0):
  """Causal attention by `impl`; "jax_pallas" is jax's own Pallas (Triton) flash attention."""
  if impl == "jax_pallas":
    from jax.experimental.pallas.ops.gpu import attention as jax_attention
    if segment_ids is not None or dropout_rate:
      raise ValueError("jax_pallas is timed on plain causal attention only (its segment ids let "
                       "padding attend to padding, and it has no dropout)")
    return jax_attention.mha(q, k, v, None, sm_scale=1.0 / np.sqrt(q.shape[-1]), causal=True,
                             interpret=jax.default_backend() == "cpu")
  key = jax.random.key(0) if dropout_rate else None
  return attention_lib.attention(q, k, v, causal=True, segment_ids=segment_ids, impl=impl,
                                 dropout_rate=dropout_rate, dropout_rng=key)


def forward_fn(impl, segment_ids=None, dropout_rate=0.0):
  return jax.jit(lambda q, k, v: attend(impl, q, k, v, segment_ids, dropout_rate))


def forward_backward_fn(impl, segment_ids=None, dropout_rate=0.0):
  def run(q, k, v, do):
    out, vjp = jax.vjp(lambda q, k, v: attend(impl, q, k, v, segment_ids, dropout_rate), q, k, v)
    return (out, *vjp(do))
  return jax.jit(run)


def check_correctness(impl, dtype_name, shape, segment_ids=None, dropout_rate=0.0) -> str:
  """Raises if impl's output or gradients stray from the fp32 reference (with dropout: the XLA
  path with the same hashed mask); returns a summary."""
  q, k, v, do = random_inputs(shape, DTYPES[dtype_name], seed=1)
  got = forward_backward_fn(impl, segment_ids, dropout_rate)(q, k, v, do)
  f32 = lambda x: x.astype(jnp.float32)
  with jax.default_matmul_precision("highest"):  # no TF32 in the reference
    want = forward_backward_fn("xla", segment_ids, dropout_rate)(f32(q), f32(k), f32(v), f32(do))
  errors = {}
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    g, w = np.asarray(f32(g)), np.asarray(w)
    if not np.all(np.isfinite(g)):
      raise AssertionError(f"{impl} {dtype_name}: non-finite {name}")
    errors[name] = float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1.0))
  worst = max(errors, key=errors.get)
  if errors[worst] > TOLERANCE[dtype_name]:
    raise AssertionError(f"{impl} {dtype_name}{' packed' if segment_ids is not None else ''}: "
                         f"{worst} relative error {errors[worst]:.2e} > {TOLERANCE[dtype_name]}")
  return " ".join(f"{n}={e:.1e}" for n, e in errors.items())


def seconds_per_call(fn, *args, iters: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(3):  # best of three runs of `iters` calls: robust to a noisy neighbour
    start = time.perf_counter()
    for _ in range(iters):
      result = fn(*args)
    jax.block_until_ready(result)
    best = min(best, (time.perf_counter() - start) / iters)
  return best


def main(argv=None):
  args = parse_args(argv)
  on_gpu = jax.default_backend() in ("gpu", "cuda")
  if not on_gpu and not args.smoke:
    sys.exit(f"bench/attention.py times GPU kernels; the JAX backend here is "
             f"{jax.default_backend()!r}. Run it on a GPU machine, or pass --smoke to check the "
             "script on CPU (tiny shapes, pallas interpreted, no meaningful numbers).")
  B, T, H, K = args.batch, args.seq, args.heads, args.head_dim
  print(f"machine: {machine()}")
  print(f"shape: batch {B}, seq {T}, heads {H}, head dim {K}, causal"
        f"{'  [SMOKE: tiny shapes, not a measurement]' if args.smoke else ''}")

  # 1. Correctness on this device, at a reduced batch and head count (the fp32 reference
  #    materialises [B, H, T, T] scores).
  check_shape = (min(B, 2), T, min(H, 4), K)
  available = []
  for impl in IMPLS:
    try:
      for dtype_name in args.dtypes:
        summary = check_correctness(impl, dtype_name, check_shape)
        print(f"correct  {impl:6s} {dtype_name}: {summary}")
      if impl == "pallas":
        for dtype_name in args.dtypes:
          summary = check_correctness(impl, dtype_name, check_shape,
                                      packed_segment_ids(check_shape[0], T))
          print(f"correct  {impl:6s} {dtype_name} packed documents: {summary}")
          summary = check_correctness(impl, dtype_name, check_shape,
                                      packed_segment_ids(check_shape[0], T), dropout_rate=0.1)
          print(f"correct  {impl:6s} {dtype_name} packed documents, dropout 0.1: {summary}")
      available.append(impl)
    except Exception as e:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
      if impl == "pallas":
        raise  # our kernel must work everywhere
      print(f"skipped  {impl}: {type(e).__name__}: {e}")

  # 2. Throughput at the full shape.
  flops_fwd = 4 * B * H * T * T * K / 2  # causal: half the score matrix
  flops = {"fwd": flops_fwd, "fwd+bwd": 3.5 * flops_fwd}
  tflops = {}
  for dtype_name in args.dtypes:
    q, k, v, do = random_inputs((B, T, H, K), DTYPES[dtype_name])
    for impl in available:
      calls = {"fwd": (forward_fn(impl), (q, k, v)),
               "fwd+bwd": (forward_backward_fn(impl), (q, k, v, do))}
      for mode, (fn, fn_args) in calls.items():
        seconds = seconds_per_call(fn, *fn_args, iters=args.iters)
        tflops[dtype_name, impl, mode] = flops[mode] / seconds / 1e12
        print(f"time     {impl:6s} {dtype_name} {mode:7s}: {seconds * 1e3:8.3f} ms  "
              f"{tflops[dtype_name, impl, mode]:7.2f} TFLOP/s")
    for impl in ("xla", "pallas"):  # the paper's training attention: dropout 0.1
      seconds = seconds_per_call(forward_backward_fn(impl, dropout_rate=0.1), q, k, v, do,
                                 iters=args.iters)
      tflops[dtype_name, impl + "+dropout", "fwd+bwd"] = flops["fwd+bwd"] / seconds / 1e12
      print(f"time     {impl:6s} {dtype_name} fwd+bwd dropout 0.1: {seconds * 1e3:8.3f} ms  "
            f"{tflops[dtype_name, impl + '+dropout', 'fwd+bwd']:7.2f} TFLOP/s")

  print("\n| dtype | impl | fwd TFLOP/s | fwd+bwd TFLOP/s | pallas / impl (fwd+bwd) |")
  print("|---|---|---|---|---|")
  for dtype_name in args.dtypes:
    for impl in available:
      fb = tflops[dtype_name, impl, "fwd+bwd"]
      ratio = tflops[dtype_name, "pallas", "fwd+bwd"] / fb
      print(f"| {dtype_name} | {impl} | {tflops[dtype_name, impl, 'fwd']:.2f} | {fb:.2f} "
            f"| {ratio:.2f}x |")
  print()

  peer = "cudnn" if "cudnn" in available else "xla"
  head = args.dtypes[0]
  ours = tflops[head, "pallas", "fwd+bwd"]
  theirs = tflops[head, peer, "fwd+bwd"]
  peers = {impl: round(ours / tflops[head, impl, "fwd+bwd"], 4)
           for impl in available if impl != "pallas"}
  peers["xla+dropout"] = round(tflops[head, "pallas+dropout", "fwd+bwd"]
                               / tflops[head, "xla+dropout", "fwd+bwd"], 4)
  print(json.dumps({
      "name": f"attention_fwd_bwd_{head}_causal_T{T}_K{K}_pallas_vs_{peer}"
              + ("_smoke" if args.smoke else ""),
      "ours": round(ours, 4), "peer": round(theirs, 4), "ratio": round(ours / theirs, 4),
      "unit": "TFLOP/s", "machine": machine() + (" [smoke]" if args.smoke else ""),
      "peers": peers,
  }))


if __name__ == "__main__":
  main()
