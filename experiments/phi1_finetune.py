"""phi-1 (1.3B) finetuning on CodeExercises from the pretrained base (paper §2.3).

8 GPUs, one host (after experiments/phi1_pretrain.py):
  phi1 train --config experiments/phi1_finetune.py --workdir runs/phi1 \
      --config.init_from=runs/phi1_base/export
CPU smoke run: phi1 train --config experiments/phi1_finetune.py:cpu --workdir runs/phi1_cpu \
      --config.init_from=runs/phi1_base_cpu/export
"""

from experiments import cpu_switch, recipes
from phi1.model import Phi1Config


def get_config(arg: str = ""):
  c = recipes.finetune(Phi1Config.phi1(), init_from="runs/phi1_base/export")
  return recipes.cpu_size(c, "finetune") if cpu_switch.is_cpu(arg, "phi1_finetune") else c
