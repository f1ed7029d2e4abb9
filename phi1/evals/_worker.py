"""The sandbox's fork server: one per worker, started by `phi1.evals.sandbox.Sandbox`.

Runs as `python -I _worker.py CONFIG_JSON` (the standard library only) and talks to
the host over fds 0 and 1: a request is a length-prefixed JSON header followed by the program's
code, the benchmark's setup and the test; a response is a length-prefixed JSON result. Set up once:
bubblewrap's or our own (as root) PID, network, mount, IPC and UTS namespaces with this server as
PID 1 (else a child subreaper), the allow-listed read-only view, the seccomp filter, the judge
process (`Judge`). Per program: a tmpfs working directory, a fork that reads its code from a pipe
the request is spliced into and gives everything up (`_child`), the test handed to the judge the
same way, then every process but the judge killed and the rest cleared (`_leftovers`). This process
never runs untrusted code and never holds a program's code or test.
"""

import errno
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

# python -I leaves the script's directory off sys.path: add it for our sibling modules only.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _candidate  # noqa: E402
import _judge as _judge_lib  # noqa: E402
import _leftovers  # noqa: E402
import _namespaces as ns  # noqa: E402
import _plain  # noqa: E402
import _seccomp  # noqa: E402  (the filter's loader only: the host compiled it)
del sys.path[0]

# What HumanEval's and MBPP's programs import, loaded once here so each fork gets it for free.
# Every module loaded here costs each worker's start its import and every program's fork and exit
# its pages; a program imports anything else itself. Never `threading` or `random` (nor modules
# that import them: `statistics`, `tempfile`, `subprocess`): their at-fork hooks would run in
# every program's fork (~0.4 ms and 170 page copies each time).
PREIMPORT = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
             "typing", "copy", "operator", "json", "io", "enum", "array", "cmath", "numbers",
             "textwrap", "unicodedata", "abc", "contextlib")

REQUEST_FD, RESPONSE_FD = 1021, 1022  # the protocol pipes, moved out of the way of programs


_read_exact = _plain.read_exact


def _send(msg):
  data = json.dumps(msg).encode()
  _plain.write_frame(RESPONSE_FD, data)


def _receive():
  """A request's header; the program's code and its test follow it on the pipe, read by the
  program's and the judge's processes themselves."""
  (n,) = struct.unpack(">I", _read_exact(REQUEST_FD, 4))
  return json.loads(_read_exact(REQUEST_FD, n))


def _limits(cfg, timeout_s):
  """timeout_s None: no CPU limit (the judge, which outlives programs; the deadline bounds it)."""
  """rlimits of the program's and the judge's processes. The address-space limit leaves room for
  every thread the pids limit allows (a thread's stack is address space, mostly never touched):
  the cgroup's memory limit bounds what is really used, the pids limit how many threads."""
  memory = cfg["memory_mb"] << 20
  stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
  stack = 8 << 20 if stack in (resource.RLIM_INFINITY, -1) or stack > 64 << 20 else stack
  address_space = memory + (cfg["max_threads"] + 16) * (stack + (64 << 10))
  cpu = None if timeout_s is None else int(timeout_s) + 1
  for limit, value in ((resource.RLIMIT_AS, address_space), (resource.RLIMIT_DATA, address_space),
                       (resource.RLIMIT_CPU, cpu),
                       (resource.RLIMIT_FSIZE, cfg["file_size_mb"] << 20),
                       (resource.RLIMIT_NOFILE, 128), (resource.RLIMIT_NPROC, cfg["nproc"]),
                       (resource.RLIMIT_CORE, 0)):
    if value is not None:  # nproc is None where the worker's pids cgroup bounds processes
      resource.setrlimit(limit, (value, value + 1 if limit == resource.RLIMIT_CPU else value))


def _become(uid, gid):
  if uid is not None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from 0 to non-0: every capability goes too
  # Not dumpable: no other process of the same user may open its /proc/PID/mem, fds or trace it.
  ns.prctl(ns.PR_SET_DUMPABLE, 0)


def _read_text(fd, n):
  return _read_exact(fd, n).decode("utf-8", "surrogatepass") if n else ""


def _pass_on(n, target, devnull):
  """Moves the next n bytes of the request stream into the pipe `target` with splice(2), so they
  never enter this process's memory. If the reader died, the rest goes to /dev/null: the stream
  stays in step. False when the host is gone."""
  while n:
    try:
      moved = os.splice(REQUEST_FD, target, n)
    except BrokenPipeError:
      target = devnull
      continue
    if not moved:
      return False
    n -= moved
  return True


def _child(request, code_fd, out_w, to_judge, from_judge, workdir, cfg):
  """The forked program process: reads its code from a pipe the server spliced it into (so the
  server's memory never holds a program's code or test), gives everything up, runs it. Never
  returns."""
  code = _read_text(code_fd, request["code_bytes"])
  os.setsid()
  os.chdir(workdir)
  devnull = os.open("/dev/null", os.O_RDONLY)
  os.dup2(devnull, 0)
  os.dup2(out_w, 1)
  os.dup2(out_w, 2)
  os.dup2(to_judge, 3)
  if from_judge is not None:
    os.dup2(from_judge, 4)
  os.closerange(3 if to_judge is None else 4 if from_judge is None else 5, 1 << 16)
  _limits(cfg, request["timeout_s"])
  if cfg["ipc_namespace"]:
    ns.new_ipc_namespace()
  if cfg["session_keyring"]:
    ns.new_session_keyring()
  ns.set_oom_score(1000)
  # no_new_privs and the environment (cfg["env"], HOME and TMPDIR the working directory, whose
  # path is the same for every program) were set once by the server: inherited.
  _become(cfg["uid"], cfg["gid"])
  sys.stderr = sys.stdout  # the server's line-buffered stream on fd 1 (main): output in order
  _candidate.run(code, 3, None if from_judge is None else 4)


class Judge:
  """The worker's judge process (`_judge.serve`) and the unix socket to it. Forked from this server,
  whose memory never holds a test, and replaced whenever a program ends without its verdict (a
  late verdict must never be read as the next program's)."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.start()

  def start(self):
    ours, theirs = socket.socketpair()
    self.pid = os.fork()
    if self.pid == 0:
      try:
        ours.close()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in range(3):
          os.dup2(null, fd)
        os.dup2(theirs.fileno(), 3)
        os.closerange(4, 1 << 16)
        sock = socket.socket(fileno=3)
        ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
        _limits(self.cfg, None)
        ns.prctl(ns.PR_SET_NO_NEW_PRIVS, 1)
        _become(self.cfg["judge_uid"], self.cfg["judge_gid"])
        _judge_lib.serve(sock)
      finally:
        os._exit(111)
    theirs.close()
    self.sock = ours
    self.fd = ours.fileno()
    self.pidfd = os.pidfd_open(self.pid)

  def stop(self):
    try:
      os.kill(self.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    try:
      os.waitpid(self.pid, 0)
    except ChildProcessError:
      pass  # reaped with a program's processes
    self.sock.close()
    os.close(self.pidfd)

  def restart(self):
    self.stop()
    self.start()


def _private_dir(parent, prefix):
  """tempfile.mkdtemp without tempfile, which imports `random` and its at-fork hook."""
  while True:
    path = os.path.join(parent, f"{prefix}{os.getpid()}-{os.urandom(6).hex()}")
    try:
      os.mkdir(path, 0o700)
      return path
    except FileExistsError:
      continue


def _fork(target, *args):
  pid = os.fork()
  if pid == 0:
    try:
      target(*args)
    finally:
      os._exit(111)
  return pid


def _execute(request, cfg, workdir, judge):
  start = time.monotonic()
  os.mkdir(workdir, 0o700)
  if cfg["program_tmpfs"]:
    ns.mount_program_tmpfs(workdir, cfg["uid"], cfg["gid"], cfg["tmp_mb"])
  elif cfg["uid"] is not None:
    os.chown(workdir, cfg["uid"], cfg["gid"])
  tested = bool(request["test_bytes"] or request["setup_bytes"])
  out_r, out_w = os.pipe()
  to_judge_r, to_judge_w = os.pipe()
  to_program_r, to_program_w = os.pipe() if tested else (None, None)
  verdict_r = judge.fd if tested else to_judge_r
  # Each process reads its part of the request from a pipe of its own, spliced from the stream
  # after the fork: a part larger than a pipe's buffer flows while the process reads it.
  code_r, code_w = os.pipe()
  pids = [_fork(_child, request, code_r, out_w, to_judge_w, to_program_r, workdir, cfg)]
  stream_intact = _pass_on(request["code_bytes"], code_w, cfg["devnull"])
  if tested:
    test_r, test_w = os.pipe()
    header = json.dumps({k: request[k] for k in ("entry_point", "setup_bytes", "test_bytes")})
    socket.send_fds(judge.sock, [header.encode()], [test_r, to_program_w, to_judge_r])
    stream_intact &= _pass_on(request["setup_bytes"] + request["test_bytes"], test_w,
                              cfg["devnull"])
    for fd in (test_r, test_w, to_program_w, to_judge_r):
      os.close(fd)
  for fd in (code_r, code_w, out_w, to_judge_w, to_program_r):
    if fd is not None:
      os.close(fd)
  pidfds = {os.pidfd_open(pids[0]): pids[0]}
  if tested:
    pids.append(judge.pid)
    pidfds[judge.pidfd] = judge.pid
  os.set_blocking(out_r, False)
  os.set_blocking(verdict_r, False)
  output, report = bytearray(), bytearray()
  deadline = start + request["timeout_s"]
  timed_out, exited, verdict = False, set(), None
  open_fds = [out_r, verdict_r]

  def drain(fd):
    try:
      data = os.read(fd, 1 << 16)
    except BlockingIOError:
      return
    if not data:
      open_fds.remove(fd)
    elif fd == out_r:  # the rest is drained unread, so the program never blocks on a full pipe
      output.extend(data[:max(0, cfg["max_output_bytes"] - len(output))])
    elif len(report) < 1 << 16:
      report.extend(data)

  # Done when the verdict is in, when the judge (or, untested, the program) ended, or at the deadline.
  while stream_intact and verdict is None and pids[-1] not in exited:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      timed_out = True
      break
    ready, _, _ = select.select(open_fds + list(pidfds), [], [], remaining)
    for fd in sorted(ready, key=lambda fd: fd in pidfds):  # pipes first: a verdict, then an exit
      if fd in pidfds:
        exited.add(pidfds[fd])
      else:
        drain(fd)
    verdict = _plain.parse_frame(report)
  for fd in list(open_fds):  # whatever is already written; never wait on a grandchild's pipe end
    drain(fd)
  verdict = _plain.parse_frame(report)
  statuses = {}
  _leftovers.kill_all_but(pids[0], statuses, spare=judge.pid)
  status = statuses[pids[0]]
  if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
    exited.add(pids[0])  # it ended on its own, though its exit was not seen yet
  os.close(out_r)
  os.close(next(iter(pidfds)))  # the program's; the judge's stays with the judge
  if tested:
    os.set_blocking(verdict_r, True)
  else:
    os.close(verdict_r)
  if judge.pid in statuses or (tested and verdict is None):  # no verdict read: a fresh judge
    judge.restart()
  duration = time.monotonic() - start
  left = _leftovers.cleanup(workdir, cfg)
  if not stream_intact:
    left = "the host closed the request stream"
  result = _verdict(verdict, tested, status, pids[0] in exited, timed_out,
                    request["timeout_s"])
  if result["error"] is not None:
    result["error"] = _plain.cap_text(result["error"], 1000)
  # "replace": one character per undecodable byte; then at most max_output_bytes of memory.
  result.update(duration_s=duration, output=_plain.cap_text(output.decode("utf-8", "replace"),
                                                            cfg["max_output_bytes"]))
  if left:
    result["retire"] = left
  return result


def _verdict(verdict, tested, status, exited, timed_out, timeout_s):
  if verdict == ("done",):
    return dict(status="passed", error=None)
  if type(verdict) is tuple and len(verdict) == 3 and all(type(x) is str for x in verdict):
    kind, message = verdict[1:]
    if verdict[0] == "raised":  # an untested program's own outcome
      verdict = ("failed" if kind == "AssertionError" else "error", kind, message)
    if verdict[0] in ("passed", "failed", "error"):
      return dict(status=verdict[0], error=f"{kind}: {message}" if kind else None)
  if timed_out:
    return dict(status="timeout", error=f"no result within {timeout_s:g} s")
  if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
    return dict(status="timeout", error="CPU time limit")
  if not exited:
    return dict(status="crashed", error="the program stopped answering its judge" if tested else
                "the program's process ended without a result")
  if os.WIFSIGNALED(status):
    return dict(status="crashed", error=f"killed by {signal.Signals(os.WTERMSIG(status)).name}")
  return dict(status="crashed", error=f"exited with code {os.waitstatus_to_exitcode(status)} "
                                      "before reporting a result")


SYSCALL_FILTER = None  # the compiled seccomp filter, once main() has built it


def _per_program_protections(cfg, tmp_root, protections):
  """Tries once what each program's child will do, and records what this machine does not allow."""
  global SYSCALL_FILTER
  if cfg["seccomp_bpf"]:  # compiled by the host (`_seccomp.compiled`); else it said why not
    SYSCALL_FILTER = _seccomp.Filter(bytes.fromhex(cfg["seccomp_bpf"]))
  probe = os.path.join(tmp_root, "probe")
  os.mkdir(probe, 0o700)
  try:
    if not cfg["private_mounts"]:  # never mount anything in the host's own mount namespace
      raise OSError("no mount namespace of our own")
    ns.mount_program_tmpfs(probe, cfg["uid"], cfg["gid"], 1)
    ns.unmount(probe)
    cfg["program_tmpfs"] = True
    # /dev/shm (multiprocessing's semaphores, shared memory): the programs' own, emptied after each.
    ns.mount_program_tmpfs("/dev/shm", cfg["uid"], cfg["gid"], cfg["tmp_mb"])
    cfg["private_shm"] = True
  except OSError as e:
    cfg["program_tmpfs"] = False
    protections["program_tmpfs"] = (f"off ({e}): working directories are removed file by file; a "
                                    "worker whose cleanup leaves something is replaced")
  os.rmdir(probe)
  pid = os.fork()
  if pid == 0:
    try:
      ns.new_ipc_namespace()
      os._exit(0)
    except BaseException:
      os._exit(1)
  cfg["ipc_namespace"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
  if not cfg["ipc_namespace"]:
    protections["ipc_namespace"] = ("off (not allowed here): SysV IPC objects a program makes "
                                    "outlive it, in the worker's IPC namespace")
  # Kernel keyrings are not namespaced. The server leaves the host's session keyring (and the keys
  # in it) once; with the filter, programs can make no keyring call at all, so a fresh keyring per
  # program (~0.1 ms each) changes nothing they can observe, and is made only without the filter.
  try:
    ns.new_session_keyring()
    cfg["session_keyring"] = SYSCALL_FILTER is None
  except OSError as e:
    cfg["session_keyring"] = False
    if e.errno in (errno.EPERM, errno.ENOSYS):  # the host's own filter (a container's): ours too
      protections["session_keyring"] = f"on (keyctl refused here, to programs as well: {e})"
    else:
      protections["session_keyring"] = f"off ({e}): programs see the host's session keyring"


def main():
  cfg = json.loads(sys.argv[1])
  os.dup2(0, REQUEST_FD)
  os.dup2(1, RESPONSE_FD)
  null = os.open("/dev/null", os.O_RDWR)
  os.dup2(null, 0)
  os.dup2(null, 1)
  os.close(null)
  # sys.stdin and sys.stdout (fds 0 and 1, pipes when made at start, never used here) are what
  # every program's process reads and writes, where fd 0 is /dev/null and fd 1 its output pipe:
  # made once, not per fork (~0.2 ms each time). Line-buffered, so output is in order with stderr.
  sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
  protections = {}
  ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)  # the host went: so do we
  ns.prctl(ns.PR_SET_DUMPABLE, 0)  # no program of our own user may read our memory or fds
  if cfg["own_namespaces"]:
    ns.enter_namespaces(cfg, protections)
  if os.getpid() != 1:
    ns.prctl(ns.PR_SET_CHILD_SUBREAPER, 1)
  ns.set_oom_score(-1000)  # in a cgroup OOM, the program goes, never its server
  if os.getuid() != 0 and cfg["uid"] is not None:
    cfg["uid"] = None
    protections["unprivileged_user"] = "off (not root)"
  # The judge runs as a user of its own, next to nobody: the program can neither signal it nor
  # open anything of it in /proc. Without root, both run as the caller (the judge not dumpable).
  cfg["judge_uid"], cfg["judge_gid"] = ((None, None) if cfg["uid"] is None else
                                        (cfg["uid"] - 1, cfg["gid"] - 1))
  if cfg["uid"] is None and cfg["nproc"] is not None:  # it counts every task of our own user too
    cfg["nproc"] += _leftovers.tasks_of_user(os.getuid())
  for name in PREIMPORT:
    try:
      __import__(name)
    except ImportError:
      pass
  cfg["devnull"] = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
  tmp_root = _private_dir("/tmp", "phi1-sandbox-")
  os.chmod(tmp_root, 0o711)
  _per_program_protections(cfg, tmp_root, protections)
  # What every program's process inherits, set here once: its environment (nothing of the host's;
  # HOME and TMPDIR its working directory, a fresh one per program at this same path) and
  # no_new_privs (no setuid binary gains rights; it cannot be unset).
  workdir = os.path.join(tmp_root, "program")
  os.environ.clear()
  os.environ.update(cfg["env"], HOME=workdir, TMPDIR=workdir)
  ns.prctl(ns.PR_SET_NO_NEW_PRIVS, 1)
  if SYSCALL_FILTER is not None:  # last: from here on the server and every program run under it
    SYSCALL_FILTER.load()
  import gc
  gc.freeze()  # forked children then leave the pre-imported objects' pages shared
  judge = Judge(cfg)  # before any request: its memory, like ours, holds no test yet
  if cfg.get("memory_stat"):
    cfg["memory_baseline"] = _leftovers.charged(cfg["memory_stat"])
  _send(dict(ready=True, pid=os.getpid(), protections=protections))
  try:
    while True:
      try:
        program = _receive()
      except EOFError:
        break
      try:
        result = _execute(program, cfg, workdir, judge)
      except Exception as e:  # a harness fault: reported for this program; a fresh worker goes on
        result = dict(status="crashed", error=f"sandbox: {type(e).__name__}: {e}", duration_s=0.0,
                      output="", retire="the server failed")
      _send(result)
      if result.get("retire"):
        break
  finally:
    judge.stop()  # reaped here, so its CPU time is counted with ours
    _leftovers.remove_tree(tmp_root)


if __name__ == "__main__":
  main()
