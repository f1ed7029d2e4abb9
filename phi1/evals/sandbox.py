"""Runs untrusted Python (model completions, synthetic exercises) isolated from the operating system,
and judges it where it cannot reach the verdict.

    from phi1.evals.sandbox import Program, Sandbox, check_program

    with Sandbox(workers=2, timeout_s=3.0) as sandbox:
      results = sandbox.run([Program(code=prompt + completion, test=test + "\ncheck(f)",
                                     entry_point="f", setup=prompt), "x = 1"])
    results[0].status    # "passed" | "failed" | "error" | "timeout" | "crashed"
    results[0].error     # "AssertionError: ..." for failed/error, the reason for timeout/crashed
    check_program("assert 1 + 1 == 2", timeout_s=3.0).passed   # one-off: starts a worker each call

A program is a string (run it; passed = it ran to the end) or a `Program(code, test, entry_point,
setup)`: `code` runs in the program's process; `setup` and `test` run in the judge, a process the
program cannot read, write, signal or trace, which calls the program's functions through a proxy
and gets plain builtin data back (docs/sandbox.md, "The judge").
Statuses:
  passed   the judge ran the test to its end (no test: the code returned);
  failed   an AssertionError escaped;          error    another exception (its type in `error`);
  timeout  wall clock or CPU time ran out;     crashed  the program died or stopped answering.
The verdict never comes from the exit code: `sys.exit(0)` is an error, `os._exit(0)` a crash.
Results come back in input order; `run` can be called many times on the same warm workers.
For data generation: `Sandbox(workers=N).run(exercises)` and keep those with `.passed` (a program
with asserts that raise is "failed"; one that only defines functions passes if it runs cleanly).
Programs run as `nobody` in an allow-listed read-only view of the filesystem (`_view.py`: code,
never benchmark answers): they can write only in their working directory (also TMPDIR) and
/dev/shm, tmpfs of their own. Output is kept only when asked.

How (DESIGN.md section 4; each protection and the attack it stops in docs/sandbox.md): each worker
is a fork server (`_worker.py`, no JAX) started with a clean environment (nothing of the parent's,
e.g. OPENAI_API_KEY), in its own memory+pids cgroup, inside bubblewrap when installed or, as root,
in namespaces of its own: PID 1 of new PID, network, mount, IPC and UTS namespaces. Per program it
forks the program's process (setsid, tmpfs cwd, stdin /dev/null, output into a pipe, rlimits, a new
IPC namespace, no_new_privs, `nobody`, not dumpable, under the seccomp filter of `_seccomp.py`) and
hands the test to its judge process; afterwards every process the program started is killed and
what it left is cleared (`_leftovers.py`). Protections the machine does not allow are listed once
on stderr, and in `Sandbox.protections_off`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pwd
import select
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

from phi1.evals import _seccomp
from phi1.evals._cgroup import WorkerCgroup
from phi1.evals._view import MEMORY_STAT, WORKER, bwrap_command, bwrap_works, filesystem_view

STATUSES = ("passed", "failed", "error", "timeout", "crashed")
_WORKER = WORKER
# All a program sees of an environment: nothing inherited (API keys stay in the parent).
PROGRAM_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_warned: set[str] = set()
_PIPELINE = 2                   # requests queued at each worker
_PIPE_SAFE_BYTES = 32 << 10     # below a pipe's 64 KiB buffer


@dataclasses.dataclass(frozen=True)
class Program:
  code: str
  test: str = ""
  timeout_s: float | None = None  # None: the sandbox's
  # The function the test checks. The test runs in the judge's process, not the program's; it
  # calls this function (even when it shares a builtin's name, as MBPP's `def sum`) through a proxy.
  entry_point: str = ""
  # Benchmark code the judge runs before the test (HumanEval's prompt: the helpers its tests call,
  # `poly`, `encode_cyclic`...); names it binds never come from the program.
  setup: str = ""


@dataclasses.dataclass(frozen=True)
class Result:
  status: str
  error: str | None
  duration_s: float
  output: str = ""

  @property
  def passed(self) -> bool:
    return self.status == "passed"


@dataclasses.dataclass(frozen=True)
class Isolation:
  """What the workers will do, decided once from what the machine allows (and the caller's wishes)."""
  bwrap: str | None          # path of the bwrap binary used, None when not
  own_namespaces: bool       # unshare() ourselves (root without bubblewrap)
  uid: int | None            # user programs run as, None: the caller's
  gid: int | None
  off: tuple[str, ...]       # the protections that are off, with the reason


def decide_isolation(*, bwrap: bool | None = None, namespaces: bool | None = None,
                     drop_privileges: bool | None = None) -> Isolation:
  """None means "whenever the machine allows"; False turns a protection off (for tests, debugging)."""
  root = os.geteuid() == 0
  off = []
  bwrap_path = shutil.which("bwrap") if bwrap is not False else None
  why_no_bwrap = None
  if bwrap is False:
    why_no_bwrap = "disabled by the caller"
  elif bwrap_path is None:
    why_no_bwrap = "bwrap not installed; apt-get install bubblewrap"
  elif not bwrap_works(bwrap_path):
    why_no_bwrap, bwrap_path = f"{bwrap_path} cannot create namespaces here", None
  if bwrap_path is None and bwrap is True:
    raise RuntimeError(f"bwrap=True but bubblewrap cannot be used: {why_no_bwrap}")
  own_namespaces = bwrap_path is None and namespaces is not False and root
  if own_namespaces:
    off.append(f"bubblewrap: off ({why_no_bwrap}); own namespaces and an allow-listed read-only "
               "view instead")
  elif bwrap_path is None:
    why = "disabled by the caller" if namespaces is False else "not root"
    off.append(f"read-only filesystem, PID and network namespaces: off (no bubblewrap: "
               f"{why_no_bwrap}; {why}): programs can write what the user can, reach the network "
               "and see other processes; their descendants are still all killed (child subreaper)")
  uid = gid = None
  if drop_privileges is not False and root:
    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
  else:
    why = "disabled by the caller" if drop_privileges is False else "not root"
    user = pwd.getpwuid(os.geteuid()).pw_name
    off.append(f"unprivileged user: off ({why}): programs run as {user}")
  return Isolation(bwrap_path, own_namespaces, uid, gid, tuple(off))


# Joins the cgroups named before "--" (writing its own pid), then becomes the worker command.
_JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 97; shift; done; shift; exec "$@"'


class _Worker:
  """One fork server process and its pipes (and its cgroup, when there is one)."""

  def __init__(self, command: list[str], cgroup: WorkerCgroup | None = None):
    self.cgroup = cgroup
    if cgroup is not None:
      command = ["/bin/sh", "-c", _JOIN_CGROUPS, "sh", *cgroup.procs_files, "--", *command]
    # Unbuffered: select() on the pipe must see every byte the server sent, none hidden in a buffer.
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    bufsize=0, env=dict(PROGRAM_ENV), start_new_session=True,
                                    close_fds=True)
    self.in_flight: collections.deque[int] = collections.deque()  # program indices, oldest runs
    self.head_since = 0.0
    self.hello: dict | None = None  # the server's first message, once it is ready

  def write(self, data: bytes):
    view = memoryview(data)
    while view:
      view = view[self.process.stdin.write(view):]

  def _read(self, n: int) -> bytes:
    chunks = []
    while n:
      chunk = self.process.stdout.read(n)
      if not chunk:
        raise EOFError("sandbox worker exited")
      chunks.append(chunk)
      n -= len(chunk)
    return b"".join(chunks)

  def receive(self) -> dict:
    (n,) = struct.unpack(">I", self._read(4))
    return json.loads(self._read(n))

  def close(self, graceful: bool = False):
    """Graceful: end of input lets the server clean up and exit (its CPU time then counts as ours)."""
    for stream in (self.process.stdin, self.process.stdout):
      try:
        stream.close()
      except OSError:
        pass
    if graceful:
      try:
        self.process.wait(timeout=5)
      except subprocess.TimeoutExpired:
        pass
    self.process.kill()
    self.process.wait()
    if self.cgroup is not None:
      self.cgroup.remove()


def _request(job: Program, timeout_s: float) -> bytes:
  """A header, then the code (read by the program's process) and the setup and test (read by the
  judge's): the server itself never holds a program's code or test in its memory."""
  code, setup, test = (x.encode("utf-8", "surrogatepass") for x in (job.code, job.setup, job.test))
  header = json.dumps(dict(entry_point=job.entry_point, timeout_s=timeout_s,
                           code_bytes=len(code), setup_bytes=len(setup),
                           test_bytes=len(test))).encode()
  return b"".join((struct.pack(">I", len(header)), header, code, setup, test))


class Sandbox:
  """A pool of warm fork-server workers. Use as a context manager; `run` as often as you like."""

  def __init__(self, workers: int | None = None, timeout_s: float = 3.0, *, memory_mb: int = 2048,
               file_size_mb: int = 16, max_processes: int = 256, max_output_bytes: int = 1 << 16,
               capture_output: bool = False, bwrap: bool | None = None,
               namespaces: bool | None = None, drop_privileges: bool | None = None,
               seccomp: bool | None = None, cgroup: bool | None = None, tmp_mb: int = 256,
               quiet: bool = False):
    """capture_output: keep each program's first `max_output_bytes` of stdout+stderr (decoded, bad
    bytes as U+FFFD, so at most that many characters) in `Result.output`; off, nothing is kept.
    seccomp: the system-call filter (`_seccomp.py`); None: whenever libseccomp is there."""
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    self.workers = workers or len(os.sched_getaffinity(0))
    self.timeout_s = timeout_s
    self.isolation = decide_isolation(bwrap=bwrap, namespaces=namespaces,
                                      drop_privileges=drop_privileges)
    # One cgroup per worker bounds the program, all its descendants and its tmpfs files together.
    self._cgroup_limits = ((memory_mb + tmp_mb + 256) << 20, max_processes + 16)
    self._cgroup = cgroup
    self._cgroups_made = 0
    self._seccomp_off = None
    bpf = None
    if seccomp is False:
      self._seccomp_off = "seccomp: off (disabled by the caller)"
    else:
      try:  # compiled here, once per process: the workers' servers only load it
        bpf = _seccomp.compiled().hex()
      except (ImportError, RuntimeError, OSError, AttributeError) as e:
        if seccomp:
          raise RuntimeError(f"seccomp=True but no filter could be built: {e}") from e
        self._seccomp_off = (f"seccomp: off ({e}; pip install pyseccomp, apt-get install "
                             "libseccomp2): keyrings, AF_UNIX sockets, io_uring, bpf, ptrace stay "
                             "reachable")
    self._config = dict(memory_mb=memory_mb, tmp_mb=tmp_mb, file_size_mb=file_size_mb,
                        nproc=max_processes, max_threads=max_processes,
                        max_output_bytes=max_output_bytes if capture_output else 0,
                        uid=self.isolation.uid, gid=self.isolation.gid, env=PROGRAM_ENV,
                        own_namespaces=self.isolation.own_namespaces, seccomp_bpf=bpf,
                        private_mounts=bool(self.isolation.bwrap or self.isolation.own_namespaces),
                        private_network=bool(self.isolation.bwrap or self.isolation.own_namespaces),
                        view=filesystem_view() if self.isolation.own_namespaces else [])
    self._prefix = bwrap_command(self.isolation.bwrap) if self.isolation.bwrap else []
    self._pool: list[_Worker] = []
    self.workers_replaced = 0  # after a cleanup that left something behind (see _worker._cleanup)
    self.quiet = quiet
    self._off: list[str] = []

  def _command(self, cgroup: WorkerCgroup | None) -> list[str]:
    # RLIMIT_NPROC counts every process of the user, in every worker and sandbox: one program's
    # sleeping children would starve another worker's program. The worker's pids cgroup bounds
    # its programs alone; RLIMIT_NPROC only where there is no such cgroup.
    config = dict(self._config, nproc=None if cgroup else self._config["nproc"])
    prefix = self._prefix
    if cgroup is not None and (self.isolation.bwrap or self.isolation.own_namespaces):
      # The worker's memory.stat, read-only in its view: after each program the server waits
      # until what the program charged to the cgroup is gone (docs/sandbox.md, "memory").
      config.update(memory_stat=MEMORY_STAT)
      if self.isolation.bwrap:
        prefix = prefix[:-1] + ["--ro-bind", cgroup.memory_stat, MEMORY_STAT, "--"]
      else:
        config.update(view=config["view"] + [("ro-bind", cgroup.memory_stat, MEMORY_STAT)])
    return prefix + [sys.executable, "-I", _WORKER, json.dumps(config)]

  @property
  def protections_off(self) -> tuple[str, ...]:
    """Every protection that is off in this sandbox, with the reason (also said once on stderr)."""
    return tuple(self._off)

  def __enter__(self) -> Sandbox:
    self.start()
    return self

  def __exit__(self, *exc):
    self.close()

  def start(self):
    for message in self.isolation.off + ((self._seccomp_off,) if self._seccomp_off else ()):
      self._warn(message)
    new = []
    for _ in range(self.workers - len(self._pool)):
      cgroup = self._make_cgroup()
      new.append(_Worker(self._command(cgroup), cgroup))
    for worker in new:  # all started before waiting on any: start-up costs one worker's time
      self._ready(worker)
    self._pool += new

  def _spawn(self) -> _Worker:
    cgroup = self._make_cgroup()
    return self._ready(_Worker(self._command(cgroup), cgroup))

  def _ready(self, worker: _Worker) -> _Worker:
    try:
      worker.hello = worker.receive()
    except EOFError:
      worker.close()
      raise RuntimeError(f"the sandbox worker did not start (command: "
                         f"{self._prefix[:1] + [sys.executable, _WORKER]}...); its error is above on "
                         "stderr") from None
    for name, state in worker.hello["protections"].items():
      if state.startswith("off"):
        self._warn(f"{name}: {state}")
    return worker

  def _make_cgroup(self) -> WorkerCgroup | None:
    if self._cgroup is False:
      self._warn("memory and process cgroup: off (disabled by the caller)")
      return None
    self._cgroups_made += 1
    try:
      return WorkerCgroup(f"phi1-sandbox-{os.getpid()}-{id(self):x}-{self._cgroups_made}",
                          *self._cgroup_limits)
    except OSError as e:
      if self._cgroup:
        raise RuntimeError(f"cgroup=True but no cgroup could be made: {e}") from e
      self._warn(f"memory and process cgroup: off ({e}): a program that forks can use up to "
                 "max_processes x memory_mb")
      return None

  def _warn(self, message: str):
    if message not in self._off:
      self._off.append(message)
    if message not in _warned and not self.quiet:
      _warned.add(message)
      print(f"phi1 sandbox: {message}", file=sys.stderr)

  def close(self):
    for worker in self._pool:  # all told first, so they wind down together
      worker.process.stdin.close()
    for worker in self._pool:
      worker.close(graceful=True)
    self._pool = []

  def run(self, programs: Sequence[str | Program], progress: bool = False) -> list[Result]:
    """Executes every program; results in input order. Never raises for a program's behaviour."""
    if not self._pool:
      self.start()
    jobs = [p if isinstance(p, Program) else Program(code=p) for p in programs]
    for p in jobs:
      if not all(isinstance(x, str) for x in (p.code, p.test, p.entry_point, p.setup)):
        raise TypeError(f"Program code, test, entry_point and setup must be str, got "
                        f"{type(p.code).__name__}, {type(p.test).__name__}, "
                        f"{type(p.entry_point).__name__}, {type(p.setup).__name__}")
    results: list[Result | None] = [None] * len(jobs)
    bar = _progress_bar(len(jobs)) if progress else None
    todo = collections.deque(range(len(jobs)))

    def record(i: int, result: Result):
      results[i] = result
      if bar is not None:
        bar.update(1)

    def replace(index: int, reason: Exception):
      """A dead or stuck worker: its running program crashed, the ones queued behind it go back."""
      worker = self._pool[index]
      if worker.in_flight:
        record(worker.in_flight.popleft(), Result("crashed", f"sandbox worker failed: {reason}", 0.0))
      todo.extendleft(reversed(worker.in_flight))
      worker.close()
      self._pool[index] = self._spawn()

    def fill(index: int):
      # Up to _PIPELINE requests wait at each worker, so it never idles while we are descheduled;
      # behind a running program only requests that fit in the pipe, or our write would block.
      worker = self._pool[index]
      while todo and len(worker.in_flight) < _PIPELINE:
        job = jobs[todo[0]]
        data = _request(job, job.timeout_s or self.timeout_s)
        if worker.in_flight and len(data) > _PIPE_SAFE_BYTES:
          return
        i = todo.popleft()
        try:
          worker.write(data)
        except OSError as e:
          todo.appendleft(i)
          # A worker that retires exits right after its answer: when the pipe closes under a
          # queued request, the answers already sent are read first (the loop below replaces it).
          if not worker.in_flight:
            replace(index, e)
          return
        if not worker.in_flight:
          worker.head_since = time.monotonic()
        worker.in_flight.append(i)

    for index in range(len(self._pool)):
      fill(index)
    while any(r is None for r in results):
      busy = [w.process.stdout for w in self._pool if w.in_flight]
      ready, _, _ = select.select(busy, [], [], 1.0)
      for index, worker in enumerate(list(self._pool)):
        if worker.in_flight:
          head = jobs[worker.in_flight[0]]
          # Workers enforce timeouts themselves; this only catches a worker that stopped working.
          hung = time.monotonic() - worker.head_since > (head.timeout_s or self.timeout_s) + 30
          if worker.process.stdout in ready or hung:
            try:
              if hung:
                raise EOFError("sandbox worker stopped responding")
              message = worker.receive()
              retire = message.pop("retire", None)
              result = Result(**message)
            except (EOFError, OSError, ValueError, TypeError) as e:
              replace(index, e)
            else:
              record(worker.in_flight.popleft(), result)
              worker.head_since = time.monotonic()
              if retire:  # its cleanup left something behind: it ended, a fresh one takes over
                self.workers_replaced += 1
                todo.extendleft(reversed(worker.in_flight))
                worker.in_flight.clear()
                worker.close()
                self._pool[index] = self._spawn()
        fill(index)
    if bar is not None:
      bar.close()
    return results


def _progress_bar(total: int):
  from tqdm import tqdm
  return tqdm(total=total, desc="executing", unit="program", file=sys.stderr)


def check_program(program: str | Program, timeout_s: float = 3.0, **sandbox_kwargs) -> Result:
  """Runs one program in a fresh one-worker sandbox (for many programs, use `Sandbox.run`)."""
  with Sandbox(workers=1, timeout_s=timeout_s, quiet=True, **sandbox_kwargs) as sandbox:
    return sandbox.run([program])[0]
