"""`phi1 train | eval | generate | convert | pretokenize | demo`: argument parsing only.

Everything here calls a function a notebook can call too.
"""

import argparse
import os
import sys


def _split_overrides(argv):
  """Pull `--config.key=value` (or `--config.key value`) pairs out of argv."""
  rest, overrides, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise SystemExit(f"{arg} needs a value: {arg}=VALUE")
        i, value = i + 1, argv[i + 1]
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def maybe_init_distributed():
  """Multi-host: one process per host, started by SLURM (auto-detected) or with
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID set."""
  import jax
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not address and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
    return
  # CPU hosts (tests, CPU clusters) need a collectives backend; GPUs use NCCL regardless.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if address:
    try:
      n, i = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except KeyError as e:
      raise SystemExit(f"JAX_COORDINATOR_ADDRESS is set but {e.args[0]} is not") from e
    jax.distributed.initialize(address, num_processes=n, process_id=i)
  else:
    jax.distributed.initialize()


def train_main(argv) -> int:
  argv, overrides = _split_overrides(argv)
  parser = argparse.ArgumentParser(prog="phi1 train", description="Train or resume a phi-1 model.")
  parser.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="metrics, checkpoints and plots go here")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  maybe_init_distributed()
  from phi1 import config as config_lib, train
  config = config_lib.apply_overrides(config_lib.load(args.config), overrides)
  last = train.run(config, args.workdir, progress=not args.no_progress)
  print(f"done: {last}\nworkdir: {os.path.abspath(args.workdir)}")
  return 0


def generate_main(argv) -> int:
  parser = argparse.ArgumentParser(prog="phi1 generate", description="Complete prompts.")
  parser.add_argument("--checkpoint", required=True, help="export, workdir or HF directory")
  parser.add_argument("--prompt", action="append", required=True, help="repeatable")
  parser.add_argument("--max-new-tokens", type=int, default=128)
  parser.add_argument("--temperature", type=float, default=0.0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--stop", action="append", default=None)
  args = parser.parse_args(argv)
  from phi1 import checkpoint, generate
  model, tokenizer = checkpoint.load_for_inference(args.checkpoint)
  outs = generate.generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, stop=args.stop)
  for prompt, out in zip(args.prompt, outs):
    print(prompt + out)
    print("-" * 40)
  return 0


def convert_main(argv) -> int:
  parser = argparse.ArgumentParser(
      prog="phi1 convert",
      description="HF PhiForCausalLM or CodeGenForCausalLM directory <-> phi1 export.")
  parser.add_argument("--from-hf", help="HF directory (config.json + safetensors) to import")
  parser.add_argument("--to-hf", help="phi1 export/workdir to write as an HF directory")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  if bool(args.from_hf) == bool(args.to_hf):
    raise SystemExit("give exactly one of --from-hf DIR or --to-hf DIR")
  from phi1 import checkpoint, hf
  if args.from_hf:
    model = hf.from_hf(args.from_hf)
    tokenizer = os.path.join(args.from_hf, "tokenizer.json")
    checkpoint.export_params(model, args.out, tokenizer if os.path.exists(tokenizer) else None)
  else:
    try:  # the tokenizer saved beside an export gives transformers its eos token
      model, tokenizer = checkpoint.load_for_inference(args.to_hf)
      eos_id = tokenizer.eos_id
    except FileNotFoundError:
      model, eos_id = checkpoint.load_model(args.to_hf), None
    hf.to_hf(model, args.out, eos_id=eos_id)
  print(f"wrote {os.path.abspath(args.out)}")
  return 0


COMMANDS = {
    "train": train_main,
    "generate": generate_main,
    "convert": convert_main,
    "eval": lambda argv: __import__("phi1.evals.cli", fromlist=["main"]).main(argv),
    "pretokenize": lambda argv: __import__("phi1.pretokenize", fromlist=["main"]).main(argv),
    "demo": lambda argv: __import__("phi1.demo", fromlist=["main"]).main(argv),
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] not in COMMANDS:
    print(f"usage: phi1 {{{'|'.join(COMMANDS)}}} ...  (phi1 COMMAND --help for its options)")
    return 0 if not argv or argv[0] in ("-h", "--help") else 2
  return COMMANDS[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
  sys.exit(main())
