"""The program's side of a sandboxed run: it runs the code, then answers its judge's calls.

The child the server forked for the program (`_worker._child`) ends here, with everything given up.
The code runs as the module `__sandbox__` (registered in sys.modules, so `dataclasses`, `pickle`
and `multiprocessing` find it). Then, when the program has a test, this process answers the judge's
requests on `from_judge` until the judge hangs up: ("names", [name, ...]) asks what the code
defines under those names, ("call", name or object, args, kwargs) calls one, ("getattr", object,
name) and ("setattr", object, name, value) reach a program's object the judge holds a handle to.
Every answer is plain data (`_plain`), where a value that is not stands as a handle (a number; the
object stays here); an exception is its type's name and message. Nothing here is trusted: the program can
rewrite all of it, and can still only answer with plain data, for a test it never sees.
"""

import os
import sys
import types

import _plain

MESSAGE_BYTES = 1000


def _describe(error):
  try:
    message = str(error)
  except BaseException:  # an exception whose __str__ raises
    message = "<unprintable exception>"
  return ("raised", type(error).__name__[:200], message[:MESSAGE_BYTES])


class _Objects:
  """The program's objects the judge holds handles to (kept alive here; one number per object)."""

  def __init__(self):
    self.by_number, self.numbers = [], {}

  def number(self, obj):
    if id(obj) not in self.numbers:
      self.numbers[id(obj)] = len(self.by_number)
      self.by_number.append(obj)
    return self.numbers[id(obj)]

  def get(self, number):
    if not 0 <= number < len(self.by_number):
      raise _plain.PlainDataError(f"no object {number}")
    return self.by_number[number]


def _what(value):
  """How the judge may use one of the code's names: call it, import the same module, or copy it."""
  if isinstance(value, types.ModuleType):
    return ("module", str(value.__name__))
  if callable(value):
    return ("callable",)
  try:
    return ("value", _plain.decode(_plain.encode(value)))
  except (_plain.PlainDataError, RecursionError):
    return None


def _answer(namespace, objects, request):
  kind = request[0]
  if kind == "names":
    return {name: what for name in request[1] if name in namespace
            and (what := _what(namespace[name])) is not None}
  try:
    if kind == "call":
      _, target, args, kwargs = request
      if type(target) is str:
        if target not in namespace:
          return ("raised", "NameError", f"name {target!r} is not defined")
        target = namespace[target]
      value = target(*args, **kwargs)
    elif kind == "getattr":
      value = getattr(request[1], request[2])
    else:  # setattr
      value = setattr(request[1], request[2], request[3])
  except BaseException as e:  # SystemExit too: the judge decides what it means
    return _describe(e)
  return ("returned", value)


def run(code, to_judge, from_judge, _exit=os._exit):
  """Never returns. `from_judge` is None for a program without a test: its outcome is its result."""
  module = types.ModuleType("__sandbox__")
  sys.modules["__sandbox__"] = module
  namespace = module.__dict__
  try:
    exec(compile(code, "<program>", "exec"), namespace)
    outcome = ("done",)
  except BaseException as e:  # SystemExit and KeyboardInterrupt too: they are errors here
    outcome = _describe(e)
  try:
    sys.stdout.flush()
  except BaseException:
    pass
  _plain.send(to_judge, outcome)
  objects = _Objects()
  while from_judge is not None:
    try:
      request = _plain.receive(from_judge, remote=objects.get)
    except EOFError:
      break
    except _plain.PlainDataError:
      _exit(1)
    try:
      reply = _plain.encode(_answer(namespace, objects, request), handle=objects.number)
    except BaseException as e:
      reply = _plain.encode(_describe(e))
    try:
      sys.stdout.flush()
    except BaseException:
      pass
    _plain.write_frame(to_judge, reply)
  _exit(0)
