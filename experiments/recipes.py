"""The paper's two recipes (§2.3), shared by the experiment files, plus their CPU-size variants.

Data paths default to `data/...` under the working directory; point them at your corpora with
`--config.data.sources='[{"path": "...", "weight": 1.0}]'` or edit the experiment file.
"""

from phi1 import config as config_lib
from phi1.model import Phi1Config

# CodeTextbook = filtered code-language data (~6B tokens) + synthetic textbooks (<1B tokens),
# concatenated: data.mixture="tokens" with weight 1 each draws rows in proportion to the sources'
# token counts, so every token is seen equally often (paper §2; ~6:1 at the paper's sizes).
CODETEXTBOOK = [
    {"path": "data/filtered_code", "weight": 1.0, "name": "filtered_code"},
    {"path": "data/textbooks", "weight": 1.0, "name": "textbooks"},
]
CODEEXERCISES = [{"path": "data/exercises", "weight": 1.0, "name": "exercises"}]
TOKENIZER = "data/tokenizer.json"  # CodeGen-350M-mono BPE, as phi-1 (HF microsoft/phi-1)


def pretrain(model: Phi1Config):
  """Pretraining on CodeTextbook: 1024 x 2048 tokens per step, peak LR 1e-3, warmup 750, wd 0.1,
  36,000-step schedule (phi-1-base is its step-24,000 checkpoint), fp16, dropout 0.1; Adam
  (0.9, 0.98), eps 1e-7 from phi-1.5."""
  c = config_lib.base_config()
  c.model = config_lib.model_config(model)
  c.model.attn_dropout = c.model.resid_dropout = 0.1  # paper §2.3 (released config: 0)
  # The paper's FlashAttention applied the attention dropout; so does our Pallas flash kernel.
  # "auto" runs it on a GPU and the XLA path (same hashed mask) elsewhere; the trainer records
  # which in the run's config.json.
  c.model.attention_impl = "auto"
  c.steps, c.batch_size, c.seq_len = 24_000, 1024, 2048
  c.precision, c.mesh = "fp16", "fsdp"
  c.grad_accum = 16  # 1024 sequences = 8 GPUs x 8 sequences x 16 micro-batches
  c.model.remat = "dots"
  # Not in the paper: the blocks are stacked and scanned (one compiled block; numerically the
  # unrolled model, tests/test_model.py). `phi1 plan` on 8 devices: 40.6 GB per device scanned,
  # 301 GB unrolled (XLA keeps every layer's gathered weights and activations live at once).
  c.model.scan_layers = True
  c.optimizer.peak_lr, c.optimizer.warmup_steps, c.optimizer.weight_decay = 1e-3, 750, 0.1
  c.optimizer.schedule_steps = 36_000
  # Not in the paper: phi-1.5's Adam settings (arXiv 2309.05463 §2.3), same team and architecture.
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.98, 1e-7
  c.checkpoint_every, c.keep_every = 1000, 1000
  c.data.sources = [dict(s) for s in CODETEXTBOOK]
  c.data.mixture = "tokens"  # concatenation: each token seen equally often (paper §2)
  c.data.tokenizer = TOKENIZER
  c.data.eval_fraction = 0.001
  return c


def finetune(model: Phi1Config, init_from: str):
  """Finetuning on CodeExercises: batch 256, peak LR 1e-4, warmup 50, wd 0.01, 6,000 steps, keep
  a checkpoint every 1,000 steps and pick the best (paper §2.3)."""
  c = pretrain(model)
  c.steps, c.batch_size, c.grad_accum = 6_000, 256, 4
  c.optimizer.peak_lr, c.optimizer.warmup_steps, c.optimizer.weight_decay = 1e-4, 50, 0.01
  c.optimizer.schedule_steps = 0  # the run's own steps
  c.checkpoint_every, c.keep_every = 1000, 1000  # the checkpoints best-of-N picks from (sweep.py)
  c.data.sources = [dict(s) for s in CODEEXERCISES]
  c.init_from = init_from
  return c


def demo_corpus():
  """Where the CPU-size stand-in for the paper's data (the stdlib corpus) lives. Builds nothing, so
  get_config stays pure: `train.run` builds the corpus when a run names its files."""
  from phi1 import demo_corpus as demo_corpus_lib
  return demo_corpus_lib.locate(demo_corpus_lib.default_cache_dir())


def build_demo_corpus():
  """The stdlib corpus, built now if it is not cached yet (for code that reads its files)."""
  from phi1 import demo_corpus as demo_corpus_lib
  return demo_corpus_lib.build(demo_corpus_lib.default_cache_dir(), log=lambda *_: None)


def tokenized_cache_dir() -> str:
  """Where the demo's text sources are tokenized once (data.cache_dir)."""
  import os
  from phi1 import demo_corpus as demo_corpus_lib
  return os.path.join(demo_corpus_lib.default_cache_dir(), "tokenized")


def demo_sources(corpus) -> dict:
  """Training-source entries of the demo corpus: "stdlib" (code files) and "exercises"."""
  return {"stdlib": {"path": corpus.train_path, "weight": 1.0, "name": "stdlib"},
          "exercises": {"path": corpus.exercises_train_path, "weight": 1.0, "name": "exercises"}}


def cpu_size(c, stage: str = "pretrain"):
  """Shrink a paper config to a few CPU minutes on the demo corpus; keeps the recipe's shape."""
  corpus = demo_corpus()
  sources = demo_sources(corpus)
  c.model = config_lib.model_config(Phi1Config.tiny(vocab_size=4096, max_seq_len=1024))
  c.steps, c.batch_size, c.seq_len, c.grad_accum = 50, 8, 256, 1
  c.optimizer.schedule_steps = 0  # the run's own steps
  c.optimizer.warmup_steps = 5
  c.precision, c.mesh = "fp32", "dp"
  c.log_every, c.eval_every, c.checkpoint_every, c.keep_every = 10, 25, 25, 0
  c.data.tokenizer = corpus.tokenizer_path
  c.data.cache_dir = tokenized_cache_dir()
  if stage == "pretrain":
    c.data.sources = [sources["stdlib"]]
    c.data.eval_sources = [corpus.eval_path]
  else:
    c.data.sources = [sources["exercises"]]
    c.data.eval_sources = [corpus.exercises_eval_path]
  c.data.eval_fraction = 0.0
  c.model.attention_impl = "xla"  # the Pallas kernel runs in interpret mode on CPU: slow
  c.model.attn_dropout = c.model.resid_dropout = 0.0
  return c
