"""Hostile programs against the sandbox (issue 5): each has an expected status, and after every batch
the host is unchanged, no process is left behind, the batch finished in bounded time and nothing
that should fail was counted as passed. Runs with bubblewrap and with our own namespaces."""

import os
import shutil
import socket
import time

import pytest

from phi1.evals.sandbox import Program, Sandbox

ROOT = os.geteuid() == 0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "sk-test-secret-do-not-leak-0123456789"
TIMEOUT_S = 2.0
MODES = [pytest.param(dict(bwrap=True), id="bwrap",
                      marks=pytest.mark.skipif(not shutil.which("bwrap"), reason="no bwrap")),
         pytest.param(dict(bwrap=False), id="own-namespaces")]


def failing(code):  # the attack runs, then a test that must fail
  return Program(code=code + "\ndef f():\n  return 1\n", test="assert f() == 2\n")


# Verdict forgery (issue 12, class 1): a forked copy of the program raises, so its copy of the harness
# would write its token into a pipe the program put on fd 3; the parent relays it as a pass.
FORK_FORGERY = """
import os
r, w = os.pipe()
if os.fork() == 0:
  os.dup2(w, 3)
  raise ValueError('make my harness report')
os.close(w)
os.wait()
token = os.read(r, 4096).split(b'\\t')[0]
for record in (token + b'\\tpassed\\t\\t\\n', token + b'\\t\\t\\n'):
  os.write(3, record)
os._exit(0)
"""
# The thread variant: keep the real fd 3, swap a pipe in, relay whatever the harness writes.
THREAD_FORGERY = """
import os, threading
real = os.dup(3)
r, w = os.pipe()
os.dup2(w, 3)
def relay():
  token = os.read(r, 4096).split(b'\\t')[0]
  for record in (token + b'\\tpassed\\t\\t\\n', token + b'\\t\\t\\n'):
    os.write(real, record)
threading.Thread(target=relay, daemon=True).start()
"""
# Class 2: a str subclass key "check" unequal to the test's `def check` when it is stored, equal
# when the test calls it, so the call would land on the program's no-op.
SHADOWED_CHECK = """
seen = []
class Key(str):
  def __eq__(self, other):
    seen.append(other)
    return len(seen) > 1
  __hash__ = str.__hash__
globals()[Key('check')] = lambda candidate: None
def f():
  return 1
"""


def attacks(victim_dir, victim, port):
  """(name, program, expected status, a substring of the error or None)."""
  return [
      ("fork bomb", "import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass",
       "timeout", None),
      ("memory bomb, one block", "x = bytearray(1 << 40)", "error", "MemoryError"),
      # Untouched pages (calloc): the address-space limit, without seconds of memset under load.
      ("memory bomb, growing", "a = []\nwhile True:\n  a.append(bytes(1 << 26))", "error",
       "MemoryError"),
      ("infinite loop", "while True:\n  pass", "timeout", None),
      ("sleep", "import time\ntime.sleep(60)", "timeout", None),
      ("deep recursion", "def f(n):\n  return f(n + 1)\nf(0)", "error", "RecursionError"),
      ("C stack overflow", "import sys\nsys.setrecursionlimit(10**8)\nclass A:\n  def __repr__(self):"
       "\n    return repr(A())\nrepr(A())", "crashed", "SIGSEGV"),
      ("endless output", "while True:\n  print('x' * 10000)", "timeout", None),
      ("delete with os", f"import os\nos.remove({victim!r})", "error", "Error"),
      ("delete with posix", f"import posix\nposix.unlink({victim!r})", "error", "Error"),
      ("write with io", f"import io\nio.open({victim!r}, 'w').write('pwned')", "error", "Error"),
      ("rmtree with shutil", f"import shutil\nshutil.rmtree({victim_dir!r})", "error", "Error"),
      ("write with pathlib", f"import pathlib\npathlib.Path({victim!r}).write_text('pwned')", "error",
       "Error"),
      ("create in the repo", f"open({REPO + '/pwned'!r}, 'w')", "error", "Error"),
      ("big file", "open('big', 'wb').write(b'x' * (64 << 20))", "error", "File too large"),
      ("disk bomb", "for i in range(1000):\n  open('f%d' % i, 'wb').write(b'x' * (15 << 20))",
       "error", "No space left"),
      ("leave files for the next program", "open('/tmp/leftover', 'w')", "error", "PermissionError"),
      ("leave shared memory for the next program", "open('/dev/shm/leftover', 'w')", "error",
       "Error"),
      ("many files", "fs = [open('f%d' % i, 'w') for i in range(1000)]", "error", "Too many open"),
      ("grandchild that outlives the sample",
       failing("import os, time\nif os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n"
               "    time.sleep(30)\n  os._exit(0)\n"), "failed", None),
      ("kill the parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "error",
       "PermissionError"),
      ("kill everything", failing("import os, signal\ntry:\n  os.kill(-1, signal.SIGKILL)\n"
                                  "except OSError:\n  pass"), "failed", None),
      ("signal tampering", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,"
       " signal.SIGALRM, signal.SIGXCPU):\n  signal.signal(s, signal.SIG_IGN)\nwhile True:\n  pass",
       "timeout", None),
      ("thread that keeps running", "import threading, time\nthreading.Thread(target=time.sleep, "
       "args=(60,), daemon=True).start()", "error", "ThreadsAlive"),
      ("thread that rewrites check",
       Program(code="import threading\ndef spin(g=globals()):\n  while True:\n"
                    "    g['check'] = lambda f: None\nthreading.Thread(target=spin, daemon=True)"
                    ".start()\ndef f():\n  return 1\n",
               test="def check(f):\n  assert f() == 2\ncheck(f)\n"), "error", "ThreadsAlive"),
      ("sys.exit(0) before the tests", failing("import sys\nsys.exit(0)"), "error", "SystemExit"),
      ("exit() before the tests", failing("exit()"), "error", "SystemExit"),
      ("os._exit(0) before the tests", failing("import os\nos._exit(0)"), "crashed", "code 0"),
      ("network to the host", f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)",
       "error", "Error"),
      ("network outside", "import socket\nsocket.create_connection(('1.1.1.1', 53), 1)", "error",
       "Error"),
      ("parent environment", f"import os, glob\nassert {SECRET!r} not in repr(os.environ)\n"
       "for path in glob.glob('/proc/*/environ'):\n  try:\n"
       f"    assert {SECRET!r}.encode() not in open(path, 'rb').read()\n  except OSError:\n"
       "    pass", "passed", None),
      ("secrets under /root", "print(open('/root/.bashrc').read())", "error", "Error"),
      ("become root", "import os\nos.setuid(0)", "error", "PermissionError"),
      ("tamper AssertionError", failing("import builtins\nbuiltins.AssertionError = KeyError"),
       "failed", None),
      ("tamper os.write and os._exit", failing("import os\nos.write = lambda *a: 0\n"
                                                "os._exit = lambda *a: None"), "failed", None),
      ("atexit writes a verdict", failing("import atexit, os\natexit.register(os.write, 3, "
                                          "b'passed\\n')"), "failed", None),
      ("tracing to skip asserts", failing("import sys\nsys.settrace(lambda *a: None)"), "error",
       "disabled"),
      ("guessed tokens on every fd",
       failing("import os\nfor fd in range(1024):\n  for guess in (b'passed\\n', b'0' * 32 + "
               "b'\\tpassed\\t\\t\\n', b'ok'):\n    try:\n      os.write(fd, guess)\n"
               "    except OSError:\n      pass\nos._exit(0)"), "crashed", None),
      ("close the verdict fd", failing("import os\nos.close(3)"), "crashed", None),
      ("read stdin", "input()", "error", "EOFError"),
      ("verdict forged through a fork's harness", failing(FORK_FORGERY), "crashed", None),
      ("verdict forged through a swapped fd 3 and a thread", failing(THREAD_FORGERY), "crashed",
       None),
      ("check shadowed by a str-subclass key",
       Program(SHADOWED_CHECK, test="def check(candidate):\n  assert candidate() == 2\ncheck(f)\n"),
       "failed", "AssertionError"),
      ("builtins rebound for the test", Program("import builtins\nbuiltins.abs = lambda x: 0\n"
                                                "abs = lambda x: 0\ndef f():\n  return 1\n",
                                                test="assert abs(f()) == 0\n"), "failed", None),
      ("temp cwd is usable", "open('ok.txt', 'w').write('fine')\nassert open('ok.txt').read() == "
       "'fine'", "passed", None),
  ]


def _nobody_processes():
  pids = set()
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      if os.stat(f"/proc/{pid}").st_uid == 65534:
        pids.add(pid)
    except OSError:
      pass
  return pids


def _snapshot(path):
  return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(path) for f in files}


@pytest.mark.skipif(not ROOT, reason="the isolation guarantees tested here need root")
@pytest.mark.parametrize("mode", MODES)
def test_attacks(mode, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  victim_dir = os.path.abspath(os.path.join(REPO, "..", f".sandbox-victim-{os.getpid()}"))
  if not os.access(os.path.dirname(victim_dir), os.W_OK):
    victim_dir = f"/var/tmp/sandbox-victim-{os.getpid()}"
  os.makedirs(victim_dir)
  os.chmod(victim_dir, 0o777)  # world-writable: only the sandbox stands between it and `nobody`
  victim = os.path.join(victim_dir, "victim.txt")
  with open(victim, "w") as f:
    f.write("original")
  os.chmod(victim, 0o666)
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen()
  listener.setblocking(False)
  cases = attacks(victim_dir, victim, listener.getsockname()[1])
  before = _snapshot(victim_dir)
  nobody_before = _nobody_processes()
  try:
    start = time.monotonic()
    with Sandbox(workers=2, timeout_s=TIMEOUT_S, memory_mb=512, **mode) as sandbox:
      results = sandbox.run([p for _, p, _, _ in cases])
      healthy = sandbox.run(["assert 1 + 1 == 2"] * 4)
    elapsed = time.monotonic() - start
    failures = []
    for (name, _, status, fragment), r in zip(cases, results):
      if r.status != status or (fragment and fragment not in (r.error or "")):
        failures.append(f"{name}: expected {status} ({fragment}), got {r.status}: {r.error}")
    assert not failures, "\n".join(failures)
    assert all(r.passed for r in healthy), healthy
    assert _snapshot(victim_dir) == before
    assert not os.path.exists(os.path.join(REPO, "pwned"))
    with pytest.raises(BlockingIOError):
      listener.accept()
    assert _nobody_processes() <= nobody_before
    assert elapsed < 60, f"the batch took {elapsed:.0f} s"
    assert all(r.duration_s < TIMEOUT_S + 5 for r in results), [r.duration_s for r in results]
    assert len(results[cases.index(next(c for c in cases if c[0] == "endless output"))].output) \
        <= 1 << 16
  finally:
    listener.close()
    shutil.rmtree(victim_dir, ignore_errors=True)
