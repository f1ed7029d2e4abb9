"""Validation hooks: an output counts only if it passes; rejects are counted by reason.

Checks return None (valid) or a short reason string ("truncated", "syntax_error", ...) that the
runner tallies, so a run reports exactly why outputs were thrown away.
"""

import ast
import re

_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def code_blocks(text: str) -> list[str]:
  return [m.group(1) for m in _CODE_BLOCK.finditer(text)]


def parses(code: str) -> bool:
  try:
    ast.parse(code)
    return True
  except (SyntaxError, ValueError):  # ValueError: null bytes
    return False


def check_finished(finish_reason: str | None) -> str | None:
  """An answer cut by max_tokens is incomplete prose or code: never keep it."""
  return "truncated" if finish_reason == "length" else None


def check_textbook(text: str, finish_reason: str | None, min_chars: int) -> str | None:
  """Textbook sections: finished, long enough, and with code that parses (phi-1: "natural
  language heavy text interleaved with relevant code snippets")."""
  if reason := check_finished(finish_reason):
    return reason
  if len(text.strip()) < min_chars:
    return "too_short"
  blocks = code_blocks(text)
  if not blocks:
    return "no_code"
  if not all(parses(b) for b in blocks):
    return "code_syntax_error"
  return None


def split_function(code: str, name: str) -> tuple[str, str] | str:
  """(prompt, completion) where the prompt is everything up to the end of `name`'s docstring and
  the completion the rest of its body; or a reject reason. Code after the function is dropped."""
  try:
    tree = ast.parse(code)
  except (SyntaxError, ValueError):
    return "syntax_error"
  functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
               and n.name == name]
  if not functions:
    return "wrong_name"
  function = functions[0]
  if ast.get_docstring(function) is None:
    return "no_docstring"
  body = function.body[1:]
  if not body or all(isinstance(n, ast.Pass) or (isinstance(n, ast.Expr) and
                     isinstance(n.value, ast.Constant) and n.value.value is Ellipsis) for n in body):
    return "empty_body"
  lines = code.splitlines(keepends=True)
  docstring_end = function.body[0].end_lineno
  prompt = "".join(lines[:docstring_end])
  completion = "".join(lines[docstring_end:function.end_lineno])
  if not prompt.endswith("\n"):
    prompt += "\n"
  if not completion.endswith("\n"):
    completion += "\n"
  return prompt, completion


def check_exercise(text: str, finish_reason: str | None, name: str,
                   min_completion_chars: int) -> tuple[str, str] | str:
  """(prompt, completion) of a valid exercise, or the reject reason."""
  if reason := check_finished(finish_reason):
    return reason
  blocks = code_blocks(text)
  code = blocks[0] if blocks else text  # some models answer with bare code
  if not blocks and not parses(code):
    return "no_code"
  split = split_function(code, name)
  if isinstance(split, str):
    return split
  if len(split[1].strip()) < min_completion_chars:
    return "too_short"
  return split


def run_hooks(hooks, fields: dict) -> str | None:
  """Your own checks after the built-in ones: each maps the record's fields to a reason or None."""
  for hook in hooks:
    reason = hook(fields)
    if reason:
      return str(reason)
  return None
