"""The `:cpu` switch is parsed once for every experiment file: a typo is an error, not a GPU run."""

import pytest

from experiments import cpu_switch


def test_the_two_values():
  assert cpu_switch.is_cpu("cpu", "x") and not cpu_switch.is_cpu("", "x")


@pytest.mark.parametrize("experiment", ["phi1_pretrain", "phi1_small_finetune", "ablation_knobs"])
def test_a_typo_names_the_experiment_and_the_choices(experiment):
  from phi1 import config as config_lib
  with pytest.raises(ValueError, match=f"{experiment} takes '' .* or 'cpu'.*got 'cpuu'"):
    config_lib.load(f"experiments/{experiment}.py:cpuu")
