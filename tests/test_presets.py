"""Filter presets: `paper` is §2.1's settings and the default; `cpu` fits a CPU machine; flags given
on the command line override a preset."""

import pytest

from data_gen.filtering import cli, pipeline, presets


def _config(*argv):
  return cli.config_from_args(cli.parse_args(list(argv)))


def test_paper_preset_is_the_papers_filter_and_the_default():
  paper = _config()  # no --preset: the paper's
  assert paper == _config("--preset", "paper") == pipeline.FilterConfig()
  assert paper.model == "gpt-4"                      # GPT-4 labels...
  assert paper.sample_size == 100_000                # ~100K of them
  assert paper.label_scale == "binary" and paper.positive_label == 1  # the paper's question, yes
  assert paper.embedder == "codegen:codegen-350M-mono"  # a pretrained CodeGen's embeddings
  assert paper.classifier == "random_forest"
  assert paper.token_budget == 6_000_000_000         # ~6B tokens kept
  assert paper.tokenizer == "embedder"               # counted with CodeGen's (phi-1's) tokenizer


def test_cpu_preset_keeps_the_question_and_classifier_at_cpu_cost():
  cpu = _config("--preset", "cpu")
  assert (cpu.label_scale, cpu.classifier, cpu.model) == ("binary", "random_forest", "gpt-4")
  assert cpu.embedder == "hashing" and cpu.sample_size == 2_000
  assert cpu.tokenizer == "demo" and cpu.token_budget is None


def test_flags_override_the_preset():
  c = _config("--preset", "cpu", "--sample-size", "50", "--label-scale", "additive")
  assert c.sample_size == 50 and c.embedder == "hashing"
  assert c.label_scale == "additive" and c.positive_label == 3  # the 0-5 scale's cut
  assert _config("--label-scale", "additive", "--positive-label", "4").positive_label == 4
  assert _config("--token-budget", "0").token_budget is None
  picked = _config("--select-threshold", "0.7")
  assert picked.select_threshold == 0.7 and picked.token_budget is None
  assert _config("--budget-usd", "12.5").budget_usd == 12.5
  with pytest.raises(ValueError, match="unknown preset"):
    presets.preset("gpu")
  with pytest.raises(ValueError, match="label_scale"):
    pipeline.FilterConfig(label_scale="likert")
  with pytest.raises(ValueError, match="both --price-in and --price-out"):
    pipeline.FilterConfig(price_in=1.0)
