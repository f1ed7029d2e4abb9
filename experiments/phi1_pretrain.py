"""phi-1 (1.3B) pretraining on CodeTextbook (paper §2.3; phi-1-base = the step-24,000 checkpoint).

8 GPUs, one host:
  phi1 train --config experiments/phi1_pretrain.py --workdir runs/phi1_base
SLURM, N hosts x 8 GPUs: see README "Multi-host". CPU smoke run (minutes):
  phi1 train --config experiments/phi1_pretrain.py:cpu --workdir runs/phi1_base_cpu
"""

from experiments import cpu_switch, recipes
from phi1.model import Phi1Config


def get_config(arg: str = ""):
  c = recipes.pretrain(Phi1Config.phi1())
  return recipes.cpu_size(c, "pretrain") if cpu_switch.is_cpu(arg, "phi1_pretrain") else c
