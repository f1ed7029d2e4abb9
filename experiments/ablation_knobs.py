"""Architecture and recipe knobs, one at a time from a phi-1-small (350M) baseline.

Families (each run changes one thing from `baseline`; the paper fixes all of these, §2.3):
  width_depth     the same ~250M non-embedding parameters as 12 wide or 36 narrow layers
  rotary          rotary_dim 0 (no position signal but causality) / 16 / 64 (all of the head) vs 32
  dropout         attention + residual dropout 0 (the released config) vs 0.1 (the paper)
  precision       bf16 vs fp16 with dynamic loss scaling (the paper)
  packing         attention masked at document boundaries ("document") vs across them ("concat")
  loss_on_prompt  finetuning on CodeExercises from the baseline: loss on prompt + completion vs on
                  the completion only (the paper does not say which it used)

Budget (ours, not the paper's): 8,000 steps of 256 x 2048 tokens (~4.2B tokens) on CodeTextbook
with a schedule of the same length; finetunes use the phi-1 finetune recipe for 1,000 steps.

  python -m experiments.sweep experiments/ablation_knobs.py --dry-run
  python -m experiments.sweep experiments/ablation_knobs.py --slurm slurm/knobs
  python -m experiments.sweep experiments/ablation_knobs.py --only rotary_0
  python -m experiments.plot runs/ablation_knobs/registry.csv --out runs/ablation_knobs/plots

CPU switch (`:cpu`): a tiny baseline (d 128, 2 layers) on the CPU demo corpus:
  python -m experiments.sweep experiments/ablation_knobs.py:cpu
"""

from experiments import recipes
from experiments import cpu_switch, grid
from phi1.model import Phi1Config

STEPS, BATCH = 8_000, 256
# (d_model, n_layers, n_heads, d_ff) at ~equal non-embedding parameters (12 d^2 per layer).
WIDTH_DEPTH = {"wide_shallow": (1280, 12, 20, 5120), "narrow_deep": (768, 36, 12, 3072)}
WIDTH_DEPTH_CPU = {"wide_shallow": (192, 1, 6, 768), "narrow_deep": (64, 8, 2, 256)}


def get_config(arg: str = ""):
  """The baseline: phi-1-small pretraining at the ablation budget."""
  c = recipes.pretrain(Phi1Config.phi1_small())
  c.steps, c.batch_size, c.grad_accum = STEPS, BATCH, 4  # 256 = 8 GPUs x 8 sequences x 4
  c.optimizer.schedule_steps = STEPS
  return recipes.cpu_size(c, "pretrain") if cpu_switch.is_cpu(arg, "ablation_knobs") else c


def get_sweep(arg: str = ""):
  cpu = cpu_switch.is_cpu(arg, "ablation_knobs")
  base = get_config(arg)
  head_dim = base.model.d_model // base.model.n_heads
  rotary = base.model.rotary_dim
  runs = [{"name": "baseline", "family": "baseline"}]
  for name, (d, layers, heads, ff) in (WIDTH_DEPTH_CPU if cpu else WIDTH_DEPTH).items():
    runs.append({"name": name, "family": "width_depth", "model.d_model": d,
                 "model.n_layers": layers, "model.n_heads": heads, "model.d_ff": ff})
  for dim in (0, rotary // 2, head_dim):
    runs.append({"name": f"rotary_{dim}", "family": "rotary", "model.rotary_dim": dim})
  other_dropout = 0.0 if base.model.attn_dropout else 0.1
  runs.append({"name": f"dropout_{other_dropout:g}", "family": "dropout",
               "model.attn_dropout": other_dropout, "model.resid_dropout": other_dropout})
  for precision in ("bf16", "fp16"):
    if precision != base.precision:
      runs.append({"name": precision, "family": "precision", "precision": precision})
  runs.append({"name": "packing_document", "family": "packing", "data.packing": "document"})

  finetune = recipes.finetune(Phi1Config.phi1_small(), init_from="")
  finetune.steps = finetune.optimizer.schedule_steps = 1_000
  if cpu:
    finetune = recipes.cpu_size(finetune, "finetune")
  finetune.data.packing = "document"  # one exercise per segment, so the prompt mask is exact
  for on_prompt in (True, False):
    finetune.data.loss_on_prompt = on_prompt
    runs.append({"name": f"finetune_loss_on_prompt_{on_prompt}".lower(),
                 "family": "loss_on_prompt", **grid.config_diff(base, finetune),
                 "init_from": "{run:baseline}/export"})
  return runs
