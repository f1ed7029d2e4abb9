"""The main job on one CPU: corpus -> tokenizer -> pretrain -> finetune -> generate -> HumanEval,
then the data comparison of paper Figure 2.1 in miniature.

`phi1 demo --workdir DIR` (or `make demo`) runs experiments/cpu_demo.py twice (pretrain, then
finetune from the pretrained export), completes a few HumanEval prompts, scores HumanEval on a
subset with the sandboxed harness, then trains experiments/figure21_cpu.py's runs (raw files vs
CodeTextbook-like data vs + exercises, two sizes, two budgets, three seeds) and ends with their
figure (HumanEval solution loss vs compute) and one line with the measured gap and its seed spread.
Everything goes under DIR; rerunning resumes or reuses.

It sits in experiments/ because it runs experiment files and the sweep; `phi1 demo` finds it through
the "phi1.commands" entry point that setup.py declares (phi1 itself never imports experiments).
"""

import argparse
import json
import pathlib
import time

EXPERIMENT = pathlib.Path(__file__).resolve().parent / "cpu_demo.py"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="phi1 demo", description=__doc__)
  parser.add_argument("--workdir", default="workdir/demo")
  parser.add_argument("--pretrain-steps", type=int, default=None)
  parser.add_argument("--finetune-steps", type=int, default=None)
  parser.add_argument("--humaneval-limit", type=int, default=20,
                      help="HumanEval problems to score (0 skips the evaluation)")
  parser.add_argument("--figure21", default="full", choices=("full", "ci", "off"),
                      help="end with the CPU Figure 2.1 (experiments/figure21_cpu.py): full size "
                           "(~15 min on an idle 2-core machine), the CI size, or not at all")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  from phi1 import checkpoint, config as config_lib, demo_corpus, generate, metrics, train
  from phi1.evals import cli as eval_cli, humaneval

  workdir = pathlib.Path(args.workdir).absolute()
  start = time.perf_counter()
  runs = {}
  for stage, steps in (("pretrain", args.pretrain_steps), ("finetune", args.finetune_steps)):
    config = config_lib.load(f"{EXPERIMENT}:{stage}")
    if steps:
      config.steps = steps
    if stage == "finetune":
      config.init_from = str(workdir / "pretrain" / "export")
    print(f"== {stage}: {config.steps} steps of batch {config.batch_size} x {config.seq_len} ==")
    demo_corpus.build_if_named(config.data)  # the experiment file only names its files
    last = train.run(config, workdir / stage, progress=not args.no_progress)
    runs[stage] = {k: last[k] for k in ("loss", "eval_loss", "tokens_per_sec", "mfu") if k in last}

  model, tokenizer = checkpoint.load_for_inference(workdir / "finetune")
  tasks = humaneval.load()[:3]
  completions = generate.generate(model, tokenizer, [t.prompt for t in tasks], max_new_tokens=96,
                                  stop=["\ndef ", "\nclass ", "\nif __name__", "\n#"])
  examples = [{"task_id": t.task_id, "prompt": t.prompt, "completion": c}
              for t, c in zip(tasks, completions)]
  (workdir / "completions.json").write_text(json.dumps(examples, indent=2))
  for ex in examples:
    print(f"--- {ex['task_id']} ---\n{ex['prompt'][-200:]}\033[1m{ex['completion']}\033[0m")

  summary = {"runs": runs}
  if args.humaneval_limit:
    summary["humaneval"] = eval_cli.evaluate(
        "humaneval", checkpoint=str(workdir / "finetune"), limit=args.humaneval_limit,
        max_new_tokens=128, out=str(workdir / "humaneval"), no_progress=True)
  if args.figure21 != "off":
    summary["figure21"] = figure21(workdir / "figure21", "" if args.figure21 == "full" else "ci",
                                   progress=not args.no_progress)
  summary["wall_s"] = round(time.perf_counter() - start, 1)
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  metrics.plot_losses(workdir / "pretrain")
  print(f"""
== done in {summary['wall_s']} s ==
pretrain    {workdir / 'pretrain'}  (metrics.jsonl, loss.png, tensorboard/, checkpoints/, export/)
finetune    {workdir / 'finetune'}
completions {workdir / 'completions.json'}
humaneval   {workdir / 'humaneval'}  pass@1 = {summary.get('humaneval', {}).get('pass@1')}
summary     {workdir / 'summary.json'}""")
  if "figure21" in summary:
    print(f"figure 2.1  {summary['figure21']['figure']}\n{summary['figure21']['line']}")
  return 0


def figure21(root: pathlib.Path, arg: str, progress: bool) -> dict:
  """The data comparison of paper Figure 2.1 at CPU size: train its runs (resuming), draw it."""
  from experiments import figure21_report, sweep
  spec = str(EXPERIMENT.parent / "figure21_cpu.py") + (f":{arg}" if arg else "")
  print(f"== figure 2.1 (CPU): {spec} in {root} ==")
  sweep.run_local(sweep.expand(spec, root=root), progress=progress)
  result, line, files = figure21_report.report(root)
  print(figure21_report.format_table(result))
  return {"line": line, "figure": files[0], "gaps": result["gaps"]}
