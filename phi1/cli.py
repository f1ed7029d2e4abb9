"""`phi1 train | eval | generate | convert | pretokenize | demo | plan`: argument parsing only.

Everything here calls a function a notebook can call too. Every failure prints one line and exits
non-zero: expected ones (a bad key, a missing path, a checkpoint that does not fit) as `phi1
COMMAND: what to fix`, anything else with its exception type; `--debug` (anywhere on the line)
shows the traceback instead.
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


TRAIN_HELP = """\
overrides:
  --config.KEY=VALUE sets any key of the resolved config (dotted: --config.optimizer.peak_lr=3e-4,
  --config.model.n_layers=4); values are Python literals or bare strings, parsed to the key's type.
  An unknown key is an error with the closest known one. --print-config shows every key.

resume:
  Rerunning the same command continues from WORKDIR's latest checkpoint (model, optimizer, step,
  data position): the losses are those of an uninterrupted run. SIGTERM (a SLURM preemption) or
  Ctrl-C finishes the current step, saves a checkpoint and exits (0 for SIGTERM, 130 for Ctrl-C);
  rerun the same command to resume. A larger --config.steps extends a finished run whose LR
  schedule has its own length (optimizer.schedule_steps); under schedule_steps=0 the schedule
  follows steps, so also pass --config.optimizer.schedule_steps=OLD_STEPS to keep it.

changed config:
  A rerun whose config differs from the one WORKDIR's checkpoints were made with is refused,
  naming the changed keys, as is one whose LR schedule would change ("LR schedule: 30 steps -> 45
  steps") or whose inputs' content changed (a data source topped up or edited, the tokenizer,
  the init_from weights: content fingerprints, not paths); --restart starts over (old files and
  evals move to WORKDIR/superseded/) and --continue-with-changes continues with the new config
  and data. Both are recorded in WORKDIR/identity.json, with every run's config hash.
"""


def train_main(argv) -> int:
  argv, overrides = _split_overrides(argv)
  parser = argparse.ArgumentParser(
      prog="phi1 train", description="Train a phi-1 model, or resume it where it stopped.",
      epilog=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True,
                      help="an experiment file, any path: experiments/NAME.py[:ARG]")
  parser.add_argument("--workdir", help="metrics, checkpoints, plots and the export go here")
  parser.add_argument("--print-config", action="store_true",
                      help="print the resolved config (after overrides) and exit")
  change = parser.add_mutually_exclusive_group()
  change.add_argument("--restart", action="store_true",
                      help="WORKDIR holds another config's checkpoints: start over")
  change.add_argument("--continue-with-changes", action="store_true",
                      help="WORKDIR holds another config's checkpoints: continue from the latest "
                           "with this config (recorded)")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if not args.print_config and not args.workdir:
    parser.error("--workdir is required (or --print-config to only show the config)")
  from phi1 import config as config_lib
  config = config_lib.apply_overrides(config_lib.load(args.config), overrides)
  if args.print_config:
    print(config)
    return 0
  config_lib.validate(config)
  from phi1 import demo_corpus, preemption, sharding, train
  sharding.maybe_init_distributed()
  demo_corpus.build_if_named(config.data)  # experiment files only name the CPU corpus's files
  on_change = "restart" if args.restart else "continue" if args.continue_with_changes else "refuse"
  try:
    last = train.run(config, args.workdir, progress=not args.no_progress, on_change=on_change)
  except preemption.Stopped as e:  # checkpoint saved and the message printed by train.run
    return e.exit_code
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
    "demo": lambda argv: plugin("demo")(argv),
    "plan": lambda argv: __import__("phi1.memory_plan", fromlist=["main"]).main(argv),
}
SUMMARIES = {
    "train": "Train a model from an experiment config, or resume/extend a run in its workdir.",
    "eval": "HumanEval / MBPP pass@k of samples on disk, an OpenAI-compatible server or a checkpoint.",
    "generate": "Complete prompts with a trained model (export, workdir or HF directory).",
    "convert": "Convert between a HF PhiForCausalLM directory and a phi1 export.",
    "pretokenize": "Tokenize a large corpus once into ArrayRecord shards for training.",
    "demo": "Run the whole pipeline on a CPU in minutes: corpus, tokenizer, train, finetune, eval.",
    "plan": "Per-device memory of a config's compiled train step on N devices, and what fits.",
}
# Failures a user fixes by changing the command line or the files it names: one line, no traceback.
EXPECTED_ERRORS = (OSError, KeyError, ValueError, RuntimeError)


def plugin(name: str):
  """A command another installed package adds through the "phi1.commands" entry point group:
  `phi1 demo` is experiments/demo.py, which runs experiment files (phi1 never imports them)."""
  from importlib.metadata import entry_points
  found = entry_points(group="phi1.commands", name=name)
  if not found:
    raise RuntimeError(f"`phi1 {name}` comes with the experiments package of this repository: "
                       "install it with `pip install -e .` from a checkout")
  return next(iter(found)).load()


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = ["usage: phi1 COMMAND [options]   (phi1 COMMAND --help for its options; --debug anywhere "
           "shows tracebacks)", "", "commands:"]
  lines += [f"  {name.ljust(width)}  {SUMMARIES[name]}" for name in COMMANDS]
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [a for a in argv if a != "--debug"]
  if not argv or argv[0] not in COMMANDS:
    print(usage())
    return 0 if not argv or argv[0] in ("-h", "--help") else 2
  command = argv[0]
  try:
    return COMMANDS[command](argv[1:]) or 0
  except KeyboardInterrupt:
    if debug:
      raise
    print(f"phi1 {command}: interrupted (Ctrl-C)", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - every failure is one line; --debug re-raises it
    if debug:
      raise
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if not isinstance(e, EXPECTED_ERRORS):
      message = f"{type(e).__name__}: {message}"
    message = " ".join(str(message).strip().splitlines())
    print(f"phi1 {command}: {message}  (--debug shows the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
