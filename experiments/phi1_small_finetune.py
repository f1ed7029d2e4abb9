"""phi-1-small (350M) finetuning on CodeExercises from the pretrained base (paper §2.3).

8 GPUs, one host (after experiments/phi1_small_pretrain.py):
  phi1 train --config experiments/phi1_small_finetune.py --workdir runs/phi1_small \
      --config.init_from=runs/phi1_small_base/export
CPU smoke run: phi1 train --config experiments/phi1_small_finetune.py:cpu --workdir runs/phi1_small_cpu \
      --config.init_from=runs/phi1_small_base_cpu/export
"""

from experiments import cpu_switch, recipes
from phi1.model import Phi1Config


def get_config(arg: str = ""):
  c = recipes.finetune(Phi1Config.phi1_small(), init_from="runs/phi1_small_base/export")
  return recipes.cpu_size(c, "finetune") if cpu_switch.is_cpu(arg, "phi1_small_finetune") else c
