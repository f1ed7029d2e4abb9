"""Filter presets: the paper's settings (the default) and one sized for a 2-core CPU machine.

phi-1 §2.1: GPT-4 labels ~100K samples for "educational value for a student whose goal is to learn
basic coding concepts"; a random forest on the output embeddings of a pretrained CodeGen model
scores the rest; ~6B of >35B tokens are kept. `paper` is that, with what the paper leaves open
filled in (docs/fidelity.md):
- label: the question as asked, yes/no (`label_scale="binary"`); "additive" is the 0-5 option;
- embedder: CodeGen-350M-mono (phi-1's own tokenizer and the §5 decontamination embedder), a
  `CodeGenForCausalLM.save_pretrained` directory, mean-pooled final hidden states;
- tokens: counted with that embedder's tokenizer, which is phi-1's.
`cpu`: the same question and classifier on this machine: hashing embeddings (no model forward
passes), 2,000 labels, tokens counted with the CPU demo's tokenizer, selection by the classifier's
threshold.

A preset is a set of `FilterConfig` values; flags given on the command line override it.
"""

from __future__ import annotations

PAPER_CODEGEN_DIR = "codegen-350M-mono"  # transformers' save_pretrained of Salesforce/codegen-350M-mono

PRESETS: dict[str, dict] = {
    "paper": {
        "model": "gpt-4",
        "sample_size": 100_000,
        "label_scale": "binary",
        "embedder": f"codegen:{PAPER_CODEGEN_DIR}",
        "classifier": "random_forest",
        "tokenizer": "embedder",
        "token_budget": 6_000_000_000,
    },
    "cpu": {
        "model": "gpt-4",
        "sample_size": 2_000,
        "label_scale": "binary",
        "embedder": "hashing",
        "classifier": "random_forest",
        "tokenizer": "demo",
        "token_budget": None,
    },
}
DEFAULT_PRESET = "paper"


def preset(name: str) -> dict:
  """The FilterConfig values of preset `name`."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
  return dict(PRESETS[name])
