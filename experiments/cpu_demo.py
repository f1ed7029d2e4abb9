"""CPU demo: a tiny phi-1 pretrained on the installed standard library, then finetuned on
exercise-shaped functions of it (signature + docstring -> body), as paper §2.3 in miniature.

  phi1 train --config experiments/cpu_demo.py --workdir workdir/cpu_demo            # pretrain
  phi1 train --config experiments/cpu_demo.py:finetune --workdir workdir/cpu_demo_ft \
      --config.init_from=workdir/cpu_demo/export                                     # finetune
  phi1 demo --workdir workdir/demo                                                   # all of it

Works on a fresh machine with no preparation: the corpus and its SentencePiece tokenizer are built
from the local standard library (or reused from the cache, $PHI1_CACHE or ~/.cache/phi1).
"""


from experiments import recipes
from phi1 import config as config_lib
from phi1.model import Phi1Config


def get_config(arg: str = "pretrain"):
  if arg not in ("pretrain", "finetune"):
    raise ValueError(f"cpu_demo takes 'pretrain' or 'finetune', got {arg!r}")
  corpus = recipes.demo_corpus()
  c = config_lib.base_config()
  c.model = config_lib.model_config(Phi1Config.tiny(
      vocab_size=4096, d_model=256, n_layers=4, n_heads=8, d_ff=1024, rotary_dim=16,
      max_seq_len=1024))  # trained at seq_len 256; room for HumanEval prompts at inference
  c.precision = "fp32"  # CPUs have no fast bf16/fp16 matmuls
  c.mesh = "dp"
  c.seq_len = 256
  c.batch_size = 16
  c.log_every, c.checkpoint_every, c.eval_every, c.eval_batches = 10, 50, 50, 4
  c.keep_last, c.keep_every = 2, 0
  c.data.tokenizer = corpus.tokenizer_path
  c.data.cache_dir = recipes.tokenized_cache_dir()
  if arg == "pretrain":
    c.steps = 200  # ~820K tokens: about 5 minutes on 2 cores
    c.optimizer.peak_lr, c.optimizer.warmup_steps = 3e-3, 20
    c.optimizer.schedule_steps, c.optimizer.weight_decay = 200, 0.1
    c.data.sources = [{"path": corpus.train_path, "weight": 1.0, "name": "stdlib"}]
    c.data.eval_sources = [corpus.eval_path]
  else:
    c.steps = 60
    c.optimizer.peak_lr, c.optimizer.warmup_steps = 5e-4, 6  # paper: 10x lower LR to finetune
    c.optimizer.schedule_steps, c.optimizer.weight_decay = 60, 0.01
    c.data.sources = [{"path": corpus.exercises_train_path, "weight": 1.0, "name": "exercises"}]
    c.data.eval_sources = [corpus.exercises_eval_path]
    c.data.packing = "document"  # exercises are short: keep each one to itself
  return c
