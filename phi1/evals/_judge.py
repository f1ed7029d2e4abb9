"""The judge: runs a benchmark's test against a sandboxed program that it can only call.

A process of its own, one per worker, forked by the server before any request arrives
(`_worker._start_judge`): another user than the program's (as root), not dumpable, no memory shared
with the program, and it never hands the program its test. It judges one program at a time. The test runs here, in a fresh namespace: the benchmark's `setup` first (HumanEval's prompt,
whose helpers `poly`, `encode_cyclic`... the test calls; MBPP's setup code), then the test, with
the entry point bound to a `Candidate`: calling it sends the arguments to the program's process
and gets back plain data (`_plain`) or an exception's type name and message; an object that is
not plain data (an instance of the program's class) comes back as a `Remote`, which equals only
itself. Other names the test
uses that the benchmark leaves unbound come from the program as proxies (functions), copies (plain
values) or the judge's own import of the same standard-library module. So no object of the
program's making is ever compared, and what it may do to its own interpreter (frames, audit hooks,
/proc/self/mem, rebinding builtins) cannot reach the verdict. The verdict goes to the server on
a unix socket the program never holds: (status, exception type, message), status one of passed,
failed, error, or lost (the program stopped answering; the server says why).
"""

import builtins
import importlib
import json
import os
import socket
import sys

import _plain

KIND_BYTES, MESSAGE_BYTES = 200, 500
_BUILTINS = dict(vars(builtins))
# Standard-library modules the judge imports itself when the test names one the program imported.
_IMPORTABLE = frozenset(getattr(sys, "stdlib_module_names", ())) - {"antigravity", "this"}


class NotPlainData(TypeError):
  """An argument or result the sandbox does not pass between processes (a function, a generator,
  an instance of the program's class)."""


class _Lost(BaseException):
  """The program died, hung up or answered with something that is not a message."""


class _Link:
  def __init__(self, to_candidate, from_candidate):
    self.to_candidate, self.from_candidate, self.lost = to_candidate, from_candidate, False
    self.remotes = {}

  def remote(self, number):
    if number not in self.remotes:
      self.remotes[number] = Remote(self, number)
    return self.remotes[number]

  def ask(self, request):
    if self.lost:
      raise _Lost()
    data = _plain.encode(request, handle=_number_of)  # PlainDataError: the caller's
    try:
      _plain.write_frame(self.to_candidate, data)
      return _plain.receive(self.from_candidate, remote=self.remote)
    except (EOFError, OSError, _plain.PlainDataError):
      self.lost = True
      raise _Lost() from None

  def result(self, request, what):
    try:
      reply = self.ask(request)
    except _plain.PlainDataError as e:
      raise NotPlainData(f"an argument of {what} is {e}") from None
    if type(reply) is tuple and len(reply) == 2 and reply[0] == "returned":
      return reply[1]
    if (type(reply) is tuple and len(reply) == 3 and reply[0] == "raised"
        and type(reply[1]) is str and type(reply[2]) is str):
      raise _exception(reply[1], reply[2])
    self.lost = True
    raise _Lost()


def _number_of(value):
  if type(value) is Remote:
    return object.__getattribute__(value, "_number")
  raise _plain.PlainDataError(f"a {type(value).__name__} is not plain data (builtin values only)")


class Candidate:
  """One of the program's functions, as the test sees it."""
  __slots__ = ("_name", "_link")

  def __init__(self, name, link):
    self._name, self._link = name, link

  def __call__(self, *args, **kwargs):
    return self._link.result(("call", self._name, args, kwargs), f"{self._name}()")

  def __repr__(self):
    return f"<sandboxed {self._name}>"


class Remote:
  """A program's object that is not plain data (an instance of its class, a generator), left in
  the program's process. The test may call it and get or set its attributes (plain data or other
  Remotes come back); compared, hashed or tested for truth it is this judge-side stand-in, so it
  equals only itself."""
  __slots__ = ("_link", "_number")

  def __init__(self, link, number):
    object.__setattr__(self, "_link", link)
    object.__setattr__(self, "_number", number)

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    link = object.__getattribute__(self, "_link")
    return link.result(("getattr", self, name), f".{name}")

  def __setattr__(self, name, value):
    link = object.__getattribute__(self, "_link")
    link.result(("setattr", self, name, value), f".{name} = ...")

  def __call__(self, *args, **kwargs):
    return object.__getattribute__(self, "_link").result(("call", self, args, kwargs),
                                                         "a program's object")

  def __repr__(self):
    return f"<program object {object.__getattribute__(self, '_number')}>"


def _exception(name, message):
  """The builtin exception of that name (so a test's `except ValueError` works), else a fresh
  Exception subclass carrying the name."""
  name, message = _plain.cap_text(name, KIND_BYTES), _plain.cap_text(message, MESSAGE_BYTES)
  if name == "NotPlainData":
    return NotPlainData(message)
  cls = _BUILTINS.get(name)
  if isinstance(cls, type) and issubclass(cls, BaseException):
    try:
      return cls(message)
    except Exception:  # a constructor that wants other arguments (UnicodeDecodeError)
      pass
  return type(name if name.isidentifier() else "ProgramError", (Exception,), {})(message)


class _Namespace(dict):
  """The test's globals. A name found neither here nor in the builtins is asked of the program
  once, when the test first reads it (so a test that needs nothing costs no extra message)."""

  def __init__(self, link, **names):
    super().__init__(names)
    self.link, self.asked = link, set()

  def __missing__(self, name):
    if name in _BUILTINS or name in self.asked or self.link.lost:
      raise KeyError(name)  # the interpreter goes on to the builtins, or raises NameError
    self.asked.add(name)
    known = self.link.ask(("names", [name]))
    if type(known) is not dict:
      raise _Lost()
    _bind(self, name, known.get(name), self.link)
    return dict.__getitem__(self, name)


def _bind(namespace, name, what, link):
  if type(what) is not tuple or not what:
    return
  if what == ("callable",):
    namespace[name] = Candidate(name, link)
  elif what[0] == "value" and len(what) == 2:
    namespace[name] = what[1]
  elif (what[0] == "module" and len(what) == 2 and type(what[1]) is str
        and what[1].split(".")[0] in _IMPORTABLE):
    try:
      namespace[name] = importlib.import_module(what[1])
    except Exception:
      pass


def judge(setup, test, entry_point, to_candidate, from_candidate):
  """The verdict (status, exception type, message) of one program's test."""
  link = _Link(to_candidate, from_candidate)

  def verdict_of(e):
    if link.lost or isinstance(e, _Lost):
      return ("lost",)
    try:
      message = str(e)
    except Exception:
      message = "<unprintable exception>"
    return ("failed" if type(e) is AssertionError else "error", type(e).__name__, message)

  try:
    outcome = _plain.receive(from_candidate)  # how the program's code ended
  except (EOFError, OSError, _plain.PlainDataError):
    return ("lost",)
  if outcome != ("done",):
    if (type(outcome) is tuple and len(outcome) == 3 and outcome[0] == "raised"
        and type(outcome[1]) is str and type(outcome[2]) is str):
      return ("failed" if outcome[1] == "AssertionError" else "error", outcome[1], outcome[2])
    return ("lost",)
  namespace = _Namespace(link, __name__="__judge__", __builtins__=dict(_BUILTINS))
  try:
    exec(compile(setup, "<benchmark setup>", "exec"), namespace)
    compiled = compile(test, "<test>", "exec")
    if entry_point:
      namespace[entry_point] = Candidate(entry_point, link)
    exec(compiled, namespace)
  except BaseException as e:  # SystemExit and KeyboardInterrupt too: they are errors here
    return verdict_of(e)
  return ("lost",) if link.lost else ("passed",)  # a test that swallowed a lost link fails


def serve(sock):
  """The judge process's loop, one program at a time: a header and three fds (the setup and test,
  to the program, from the program) arrive on the unix socket `sock`; the verdict goes back on
  it. Never returns; ends when the server hangs up."""
  while True:
    try:
      message, fds, _, _ = socket.recv_fds(sock, 1 << 12, 3)
    except OSError:
      os._exit(0)
    if not message or len(fds) != 3:
      os._exit(0)
    request = json.loads(message)
    test_fd, to_candidate, from_candidate = fds
    try:
      setup = _plain.read_exact(test_fd, request["setup_bytes"]).decode("utf-8", "surrogatepass")
      test = _plain.read_exact(test_fd, request["test_bytes"]).decode("utf-8", "surrogatepass")
      status, *detail = judge(setup, test, request["entry_point"], to_candidate, from_candidate)
    except Exception as e:  # a fault of the judge itself: the program did not pass
      status, detail = "error", [f"JudgeError", f"{type(e).__name__}: {e}"]
    for fd in fds:
      os.close(fd)
    kind, message = (detail + ["", ""])[:2]
    verdict = (status, _plain.cap_text(kind, KIND_BYTES), _plain.cap_text(message, MESSAGE_BYTES))
    _plain.write_frame(sock.fileno(), _plain.encode(verdict))
