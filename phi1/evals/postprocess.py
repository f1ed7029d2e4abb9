"""Turning a raw model continuation into the completion that gets executed.

Two conventions move HumanEval scores by tens of points (see PAPER.md, "Benchmarks' data"), so both
are offered and the one used is written into every score's protocol:
  "stops"       cut at the first stop sequence (bigcode-evaluation-harness lists below);
  "unindented"  keep the function body: cut at the first non-empty line that starts at column 0;
  "none"        execute the continuation as is.
"""

# bigcode-evaluation-harness, humaneval task (the list the phi-1 paper's peers report with).
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")
# bigcode-evaluation-harness, mbpp task (zero-shot docstring prompt: the model writes whole code).
MBPP_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
# Austin et al. 2021: few-shot answers are wrapped in [BEGIN] ... [DONE].
MBPP_FEWSHOT_STOPS = ("[DONE]",)
MODES = ("stops", "unindented", "none")


def cut_at_stops(text: str, stops: tuple[str, ...] | list[str]) -> str:
  cut = len(text)
  for stop in stops:
    i = text.find(stop)
    if i != -1:
      cut = min(cut, i)
  return text[:cut]


def cut_at_first_unindented(text: str) -> str:
  lines = text.splitlines(keepends=True)
  for i, line in enumerate(lines):
    if line.strip() and not line[0].isspace():
      return "".join(lines[:i])
  return text


def postprocess(text: str, mode: str, stops: tuple[str, ...] | list[str]) -> str:
  if mode == "stops":
    return cut_at_stops(text, stops)
  if mode == "unindented":
    return cut_at_first_unindented(text)
  if mode == "none":
    return text
  raise ValueError(f"unknown post-processing {mode!r}; choose one of {MODES}")
