"""Train-step throughput: our jitted step vs HF transformers PhiForCausalLM (PyTorch) on CPU.

Same model (d_model 256, 4 layers, 4 heads x 64, MLP 1024, rotary 32, vocab 51200 as phi-1), same
batch (8 x 512 tokens), same optimizer (AdamW, fp32), same loss; PyTorch uses sdpa attention and
all CPU threads. Timed rounds alternate between the two (medians reported). Prints tokens/s and MFU of both against this machine's measured fp32 matmul peak,
then the JSON result line (ratio = ours / transformers tokens per second).

  .venv/bin/python bench/train_step.py [--steps 10]
"""

import argparse
import json
import os
import platform
import time

import numpy as np

D, LAYERS, HEADS, FF, VOCAB, SEQ, BATCH = 256, 4, 4, 1024, 51200, 512, 8


def ours(steps: int):
  import jax
  from phi1 import config as config_lib, sharding, train
  from phi1.model import Phi1Config
  c = config_lib.base_config()
  c.model = config_lib.model_config(Phi1Config(
      vocab_size=VOCAB, d_model=D, n_layers=LAYERS, n_heads=HEADS, d_ff=FF, rotary_dim=32,
      max_seq_len=SEQ))
  c.batch_size, c.seq_len, c.precision, c.mesh = BATCH, SEQ, "fp32", "dp"
  c.optimizer.warmup_steps, c.optimizer.grad_clip = 1, 0.0
  trainer = train.Trainer(c, mesh=sharding.make_mesh("dp", jax.devices()[:1]))
  state = trainer.init_state()
  batches = [_batch(i) for i in range(steps + 2)]
  holder = {"state": state}

  def run(bs):
    for b in bs:
      holder["state"], m = trainer.step(holder["state"], b)
    jax.block_until_ready(m)

  run(batches[:2])  # compile + one warm step
  return lambda: _timed(run, batches[2:])


def peer(steps: int):
  import torch
  from transformers import PhiConfig, PhiForCausalLM
  torch.manual_seed(0)
  config = PhiConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FF, partial_rotary_factor=0.5,
                     max_position_embeddings=SEQ, attn_implementation="sdpa")
  model = PhiForCausalLM(config).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
  batches = [_batch(i) for i in range(steps + 2)]

  def step(b):
    inputs = torch.from_numpy(b["inputs"]).long()
    targets = torch.from_numpy(b["targets"]).long()
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  for b in batches[:2]:
    step(b)
  return lambda: _timed(lambda bs: [step(b) for b in bs], batches[2:])


def _timed(run, batches) -> float:
  start = time.perf_counter()
  run(batches)
  return len(batches) * BATCH * SEQ / (time.perf_counter() - start)


def _batch(seed):
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQ + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_mask": np.ones((BATCH, SEQ), np.float32)}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating timed rounds of each; the median counts (shared machines)")
  args = parser.parse_args()
  from phi1 import flops
  from phi1.model import Phi1Config
  model_config = Phi1Config(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, n_heads=HEADS, d_ff=FF,
                            rotary_dim=32, max_seq_len=SEQ)
  peak = flops.measured_matmul_flops()
  per_token = flops.train_flops_per_token(model_config, SEQ)
  ours_round, peer_round = ours(args.steps), peer(args.steps)
  rounds = [(ours_round(), peer_round()) for _ in range(args.rounds)]
  ours_tps = float(np.median([o for o, _ in rounds]))
  peer_tps = float(np.median([p for _, p in rounds]))
  machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, no GPU"
  print(f"machine: {machine}; measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"FLOPs/token (6N + 6LTD): {per_token / 1e6:.1f} M")
  for name, tps in (("phi1 (jax)", ours_tps), ("transformers (torch)", peer_tps)):
    print(f"{name:22s} {tps:10.0f} tokens/s   MFU {tps * per_token / peak:.1%}")
  print(json.dumps({"name": "train_step_tokens_per_sec", "ours": round(ours_tps, 1),
                    "peer": round(peer_tps, 1), "ratio": round(ours_tps / peer_tps, 3),
                    "unit": "tokens/s", "machine": machine}))


if __name__ == "__main__":
  main()
