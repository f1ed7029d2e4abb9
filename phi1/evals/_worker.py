"""The sandbox's fork server: one per worker, started by `phi1.evals.sandbox.Sandbox`.

Runs as its own Python process (`python -I _worker.py CONFIG_JSON`), imports only the standard
library and `pyseccomp` (through `_seccomp`), and talks to the host over fds 0 (requests) and 1
(responses), each message a 4-byte big-endian length followed by JSON. Per program it forks a child
that drops everything it can before running untrusted code (see `_child`); the server itself never
runs untrusted code.

Isolation is set up once per worker, so the per-program cost is one fork:
  * bubblewrap (host's choice) or, as root, our own unshare(): new PID, network, mount, IPC and UTS
    namespaces with this server as PID 1, so `kill(-1, SIGKILL)` ends every process a program left,
    including ones that called setsid(); without a PID namespace the server is a child subreaper and
    kills its descendants one generation at a time, which is equally exact.
  * the filesystem is an allow-listed, read-only view (sandbox.filesystem_view), built by bwrap's
    arguments or by `_namespaces.enter_view`.
Then the server leaves the host's session keyring and loads the seccomp filter of `_seccomp.py`,
which every program's child inherits. Per program, as root: a tmpfs working directory (removed by
one unmount) and a new IPC namespace.
"""

import errno
import json
import os
import resource
import select
import signal
import struct
import sys
import tempfile
import time

# python -I leaves the script's directory off sys.path: add it for our one sibling module only.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _namespaces as ns  # noqa: E402
try:
  import _seccomp  # noqa: E402
# pyseccomp missing (ImportError), libseccomp missing (RuntimeError) or too old (AttributeError):
# said at start, as every protection that is off.
except (ImportError, RuntimeError, OSError, AttributeError) as e:
  _seccomp, SECCOMP_MISSING = None, e
del sys.path[0]

# Modules programs commonly import, loaded once here so each fork gets them for free.
PREIMPORT = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
             "typing", "random", "statistics", "fractions", "decimal", "datetime", "copy",
             "operator", "json", "hashlib", "threading", "io", "traceback", "dataclasses", "enum",
             "array", "cmath", "numbers", "textwrap", "unicodedata", "abc", "contextlib")

REQUEST_FD, RESPONSE_FD = 1021, 1022  # the protocol pipes, moved out of the way of programs


def _read_exact(fd, n):
  chunks = []
  while n:
    chunk = os.read(fd, n)
    if not chunk:
      raise EOFError
    chunks.append(chunk)
    n -= len(chunk)
  return b"".join(chunks)


def _send(msg):
  data = json.dumps(msg).encode()
  data = struct.pack(">I", len(data)) + data
  while data:
    data = data[os.write(RESPONSE_FD, data):]


def _receive():
  (n,) = struct.unpack(">I", _read_exact(REQUEST_FD, 4))
  return json.loads(_read_exact(REQUEST_FD, n))


def _tasks_of_user(uid):
  count = 0
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
      continue
    if int(fields["Uid"].split()[0]) == uid:
      count += int(fields["Threads"])
  return count


def _children():
  pids = []
  for tid in os.listdir("/proc/self/task"):
    try:
      with open(f"/proc/self/task/{tid}/children") as f:
        pids += [int(p) for p in f.read().split()]
    except OSError:
      pass
  return pids


def _kill_everything_but_me(child, statuses):
  """SIGKILL every process a program left behind and reap them; records wait statuses by pid."""
  first = True
  while True:
    if os.getpid() == 1:  # PID 1 of our own namespace: -1 means exactly "the others in here"
      try:
        os.kill(-1, signal.SIGKILL)
      except ProcessLookupError:
        pass
    else:  # a subreaper: orphaned descendants become our children, so kill generation by generation
      for pid in _children():
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
    if first:  # the usual case, a lone child: wait for it instead of polling
      statuses[child] = os.waitpid(child, 0)[1]
      first = False
    while True:
      try:
        pid, status = os.waitpid(-1, os.WNOHANG)
      except ChildProcessError:
        return
      if pid == 0:
        time.sleep(0.0005)
        break
      statuses[pid] = status


def _child(program, tokens, out_w, res_w, workdir, cfg):
  """The forked child: give everything up, then run the program. Never returns."""
  os.setsid()
  os.chdir(workdir)
  devnull = os.open("/dev/null", os.O_RDONLY)
  os.dup2(devnull, 0)
  os.dup2(out_w, 1)
  os.dup2(out_w, 2)
  os.dup2(res_w, 3)
  os.closerange(4, 1 << 16)  # the protocol pipes above all: a program must never reach the host
  memory = cfg["memory_mb"] << 20
  cpu = int(program["timeout_s"]) + 1
  for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_DATA, memory),
                       (resource.RLIMIT_CPU, cpu),
                       (resource.RLIMIT_FSIZE, cfg["file_size_mb"] << 20),
                       (resource.RLIMIT_NOFILE, 128), (resource.RLIMIT_NPROC, cfg["nproc"]),
                       (resource.RLIMIT_CORE, 0)):
    if value is not None:  # nproc is None where the worker's pids cgroup bounds processes
      resource.setrlimit(limit, (value, value + 1 if limit == resource.RLIMIT_CPU else value))
  if cfg["ipc_namespace"]:
    ns.new_ipc_namespace()
  if cfg["session_keyring"]:
    ns.new_session_keyring()
  ns.prctl(ns.PR_SET_NO_NEW_PRIVS, 1)
  ns.set_oom_score(1000)
  if cfg["uid"] is not None:
    os.setgroups([])
    os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
    os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])  # from 0 to non-0: every capability goes too
  # Not dumpable: the program's own forks cannot open /proc/PID/mem of this process or trace it.
  ns.prctl(ns.PR_SET_DUMPABLE, 0)
  os.environ.clear()
  os.environ.update(cfg["env"], HOME=workdir, TMPDIR=workdir)
  tempfile.tempdir = None  # the server's cached choice (/tmp, not ours to write): TMPDIR decides
  sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
  sys.stderr = sys.stdout
  sys.stdin = open(0, closefd=False)
  verdict = os.fstat(3)
  _run_program(program["code"], program["test"], program["entry_point"], tokens,
               (verdict.st_dev, verdict.st_ino))


# The builtins as they were before any program ran: the test gets a copy of its own, so a program
# that rebinds `len`, `abs` or `AssertionError` in builtins changes nothing the test sees.
_BUILTINS = dict(__builtins__ if isinstance(__builtins__, dict) else vars(__builtins__))


def _referenced_names(code):
  """Every global or attribute name the test's code (and the functions it defines) mentions."""
  names, todo = set(), [code]
  while todo:
    c = todo.pop()
    names.update(c.co_names)
    todo += [k for k in c.co_consts if isinstance(k, type(code))]
  return frozenset(names)


def _run_program(code, test, entry_point, tokens, verdict_pipe, _write=os.write, _exit=os._exit,
                 _exec=exec, _compile=compile, _frames=sys._current_frames, _getpid=os.getpid,
                 _fstat=os.fstat, _AssertionError=AssertionError, _BaseException=BaseException,
                 _type=type, _str=str, _len=len, _dict=dict, _builtins=_BUILTINS,
                 _referenced=_referenced_names):
  """Runs `code`, then `test` in a namespace of its own; reports through fd 3.

  Everything used after the program starts is bound here as a default argument, so a program that
  rebinds builtins or module attributes (os.write, AssertionError, ...) cannot change the verdict.
  The verdict channel (docs/sandbox.md, "verdict"):
    * only the original process reports: a forked copy of the program, which could otherwise make
      its copy of this harness write a token into a pipe of its own, never writes anything;
    * fd 3 must still be the pipe recorded before the program ran (`verdict_pipe`, device and inode);
    * each status has its own random token, so a thread that intercepts the record of a failure
      learns nothing that reads as a pass.
  The test's namespace is a fresh dict with exact-`str` keys and the harness's own builtins; the
  program's objects the test names (the candidate function, helpers, imported modules) are copied
  into it by value, so a key that only compares equal to "check" cannot shadow the test's own.
  """

  def report(status, exc=None):
    kind = "" if exc is None else _type(exc).__name__
    try:
      message = "" if exc is None else _str(exc)[:500]
    except _BaseException:
      message = "<unprintable exception>"
    record = "\t".join([tokens[status], kind, message.replace("\n", " ").replace("\t", " ")])
    # Checked last: the lines above may run the program's own code (an exception's __str__).
    if _getpid() != pid:
      _exit(0)
    try:
      fd3 = _fstat(3)
    except _BaseException:
      _exit(0)
    if (fd3.st_dev, fd3.st_ino) == verdict_pipe:
      _write(3, (record + "\n").encode("utf-8", "backslashreplace"))
    _exit(0)

  def audit(event, args):
    # A trace function could jump past an assert line; honest solutions need neither tracing nor
    # profiling.
    if event in ("sys.settrace", "sys.setprofile"):
      raise RuntimeError(f"{event} is disabled in the sandbox")

  pid = _getpid()
  sys.addaudithook(audit)
  # Copies made here, before the program runs, are reachable from no module or function it can name.
  builtin_names, test_builtins = frozenset(_builtins), _dict(_builtins)
  namespace = _dict(__name__="__sandbox__", __builtins__=_dict(_builtins))
  try:  # both compiled, and the names the test uses listed, before any of the program runs
    phases = [(_compile(code, "<program>", "exec"), namespace)]
    if test:
      compiled = _compile(test, "<test>", "exec")
      phases.append((compiled, _dict(__name__="__sandbox_test__", __builtins__=test_builtins)))
      wanted = (_referenced(compiled) - builtin_names) | {entry_point}
  except _BaseException as e:
    report("error", e)
  for compiled, scope in phases:
    if scope is not namespace:  # the test: the program's objects it names, from exact-str keys
      for key, value in namespace.items():
        if _type(key) is _str and key in wanted:
          scope[key] = value
    try:
      _exec(compiled, scope)
    except _BaseException as e:  # SystemExit and KeyboardInterrupt too: they are errors here
      report("failed" if _type(e) is _AssertionError else "error", e)
    if _len(_frames()) > 1:  # a thread still running could rewrite the tests while they run
      report("error", ThreadsAlive("threads still running after the program returned"))
  report("passed")


class ThreadsAlive(Exception):
  pass


def _execute(program, cfg, tmp_root):
  start = time.monotonic()
  workdir = tempfile.mkdtemp(dir=tmp_root)
  if cfg["program_tmpfs"]:
    ns.mount_program_tmpfs(workdir, cfg["uid"], cfg["gid"], cfg["tmp_mb"])
  elif cfg["uid"] is not None:
    os.chown(workdir, cfg["uid"], cfg["gid"])
  out_r, out_w = os.pipe()
  res_r, res_w = os.pipe()
  tokens = {status: os.urandom(16).hex() for status in ("passed", "failed", "error")}
  pid = os.fork()
  if pid == 0:
    try:
      os.close(out_r)
      os.close(res_r)
      _child(program, tokens, out_w, res_w, workdir, cfg)
    finally:
      os._exit(111)
  os.close(out_w)
  os.close(res_w)
  pidfd = os.pidfd_open(pid)
  os.set_blocking(out_r, False)
  os.set_blocking(res_r, False)
  output, report = bytearray(), bytearray()
  deadline = start + program["timeout_s"]
  exited = timed_out = False
  open_fds = [out_r, res_r]

  def drain(fd):
    try:
      data = os.read(fd, 1 << 16)
    except BlockingIOError:
      return
    if not data:
      open_fds.remove(fd)
    elif fd == out_r:  # the rest is drained unread, so the program never blocks on a full pipe
      output.extend(data[:max(0, cfg["max_output_bytes"] - len(output))])
    else:  # keep a bounded tail: junk a program writes to guessed fds cannot push the record out
      report.extend(data)
      del report[:-8192]

  markers = [token.encode() + b"\t" for token in tokens.values()]
  while not exited and not any(marker in report for marker in markers):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      timed_out = True
      break
    ready, _, _ = select.select(open_fds + [pidfd], [], [], remaining)
    for fd in ready:
      if fd == pidfd:
        exited = True
      else:
        drain(fd)
  for fd in list(open_fds):  # whatever is already written; never wait on a grandchild's pipe end
    drain(fd)
  statuses = {}
  _kill_everything_but_me(pid, statuses)
  status = statuses[pid]
  for fd in (out_r, res_r, pidfd):
    os.close(fd)
  duration = time.monotonic() - start
  left = _cleanup(workdir, cfg)
  result = _verdict(report, tokens, status, timed_out, program["timeout_s"])
  # "replace": one character per undecodable byte, so the text is at most max_output_bytes long.
  result.update(duration_s=duration, output=output.decode("utf-8", "replace"))
  if left:
    result["retire"] = left
  return result


def _cleanup(workdir, cfg):
  """Removes the program's working directory; returns what was left behind, if anything (the host
  then replaces this worker, so no program ever starts next to another's leftovers)."""
  if cfg["program_tmpfs"]:
    try:
      ns.unmount(workdir)
      os.rmdir(workdir)
    except OSError as e:
      return f"working directory not removed: {e}"
    return None
  _remove_tree(workdir)
  if os.path.lexists(workdir):
    return "working directory not removed entirely"
  return None


def _verdict(report, tokens, status, timed_out, timeout_s):
  statuses = {token: status for status, token in tokens.items()}
  for line in bytes(report).decode("utf-8", "replace").splitlines():
    fields = line.split("\t", 2)
    if len(fields) == 3 and fields[0] in statuses:
      token, kind, message = fields
      return dict(status=statuses[token], error=f"{kind}: {message}" if kind else None)
  if timed_out:
    return dict(status="timeout", error=f"no result within {timeout_s:g} s")
  if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    if sig == signal.SIGXCPU:
      return dict(status="timeout", error="CPU time limit")
    return dict(status="crashed", error=f"killed by {signal.Signals(sig).name}")
  return dict(status="crashed", error=f"exited with code {os.waitstatus_to_exitcode(status)} "
                                      "before reporting a result")


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_tree(path):
  """Deletes `path` without recursion (a 1,100-deep tree would exhaust Python's stack) and through
  directory fds, one open at a time (its paths exceed PATH_MAX; its depth, our open-file limit).
  What cannot be removed (a directory the program, as our own user, made unreadable) is skipped
  and stays; the caller sees it."""
  try:
    fd = os.open(path, _DIR)
  except OSError:
    return
  names, skipped = [], [set()]  # the path from `path` to fd; per level, what could not go
  while True:
    subdir = None
    with os.scandir(fd) as entries:
      for entry in entries:
        if entry.name in skipped[-1]:
          continue
        if entry.is_dir(follow_symlinks=False):
          subdir = entry.name
          break
        try:
          os.unlink(entry.name, dir_fd=fd)
        except OSError:
          skipped[-1].add(entry.name)
    if subdir is not None:
      try:
        child = os.open(subdir, _DIR, dir_fd=fd)
      except OSError:
        skipped[-1].add(subdir)
        continue
      os.close(fd)
      fd = child
      names.append(subdir)
      skipped.append(set())
      continue
    if not names:
      break
    parent = os.open("..", _DIR, dir_fd=fd)
    os.close(fd)
    fd = parent
    name = names.pop()
    skipped.pop()
    try:
      os.rmdir(name, dir_fd=fd)
    except OSError:
      skipped[-1].add(name)
  os.close(fd)
  try:
    os.rmdir(path)
  except OSError:
    pass


SYSCALL_FILTER = None  # the compiled seccomp filter, once main() has built it


def _per_program_protections(cfg, tmp_root, protections):
  """Tries once what each program's child will do, and records what this machine does not allow."""
  global SYSCALL_FILTER
  if cfg["seccomp"] is False:
    protections["seccomp"] = "off (disabled by the caller)"
  else:
    try:
      if _seccomp is None:
        raise SECCOMP_MISSING
      SYSCALL_FILTER = _seccomp.build()
    except (ImportError, RuntimeError, OSError, AttributeError) as e:
      if cfg["seccomp"]:
        raise RuntimeError(f"seccomp=True but no filter could be built: {e}") from e
      protections["seccomp"] = (f"off ({e}; pip install pyseccomp, apt-get install libseccomp2): "
                                "keyrings, AF_UNIX sockets, io_uring, bpf, ptrace stay reachable")
  probe = tempfile.mkdtemp(dir=tmp_root)
  try:
    if not cfg["private_mounts"]:  # never mount anything in the host's own mount namespace
      raise OSError("no mount namespace of our own")
    ns.mount_program_tmpfs(probe, cfg["uid"], cfg["gid"], 1)
    ns.unmount(probe)
    cfg["program_tmpfs"] = True
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
  protections = {}
  ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)  # the host went: so do we
  if cfg["own_namespaces"]:
    ns.enter_namespaces(cfg, protections)
  if os.getpid() != 1:
    ns.prctl(ns.PR_SET_CHILD_SUBREAPER, 1)
  ns.set_oom_score(-1000)  # in a cgroup OOM, the program goes, never its server
  if os.getuid() != 0 and cfg["uid"] is not None:
    cfg["uid"] = None
    protections["unprivileged_user"] = "off (not root)"
  if cfg["uid"] is None and cfg["nproc"] is not None:  # it counts every task of our own user too
    cfg["nproc"] += _tasks_of_user(os.getuid())
  for name in PREIMPORT:
    try:
      __import__(name)
    except ImportError:
      pass
  tmp_root = tempfile.mkdtemp(prefix="phi1-sandbox-")
  os.chmod(tmp_root, 0o711)
  _per_program_protections(cfg, tmp_root, protections)
  if SYSCALL_FILTER is not None:  # last: from here on the server and every program run under it
    SYSCALL_FILTER.load()
  import gc
  gc.freeze()  # forked children then leave the pre-imported objects' pages shared
  _send(dict(ready=True, pid=os.getpid(), protections=protections))
  try:
    while True:
      try:
        program = _receive()
      except EOFError:
        break
      try:
        result = _execute(program, cfg, tmp_root)
      except Exception as e:  # a harness fault is reported per program, never fatal to the run
        result = dict(status="crashed", error=f"sandbox: {type(e).__name__}: {e}", duration_s=0.0,
                      output="")
      _send(result)
      if result.get("retire"):
        break
  finally:
    _remove_tree(tmp_root)


if __name__ == "__main__":
  main()
