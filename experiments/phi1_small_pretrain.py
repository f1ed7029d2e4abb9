"""phi-1-small (350M) pretraining on CodeTextbook (paper §2.3; phi-1-base = the step-24,000 checkpoint).

8 GPUs, one host:
  phi1 train --config experiments/phi1_small_pretrain.py --workdir runs/phi1_small_base
SLURM, N hosts x 8 GPUs: see README "Multi-host". CPU smoke run (minutes):
  phi1 train --config experiments/phi1_small_pretrain.py:cpu --workdir runs/phi1_small_base_cpu
"""

from experiments import cpu_switch, recipes
from phi1.model import Phi1Config


def get_config(arg: str = ""):
  c = recipes.pretrain(Phi1Config.phi1_small())
  return recipes.cpu_size(c, "pretrain") if cpu_switch.is_cpu(arg, "phi1_small_pretrain") else c
