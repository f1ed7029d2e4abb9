"""What a program leaves behind, and how the sandbox's server (`_worker.py`) clears it before the
next program: processes (killed and reaped, the judge spared), its working directory and /dev/shm,
TCP sockets in the worker's network namespace, memory still charged to the worker's cgroup. What
cannot be cleared is returned as a reason, and the host replaces the worker.
"""

import os
import re
import signal
import socket
import time

import _namespaces as ns


def tasks_of_user(uid):
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


def kill_all_but(child, statuses, spare=None):
  """SIGKILL every process a program left behind (all but us and the judge, `spare`) and reap
  them; records wait statuses by pid."""
  first = True
  while True:
    if os.getpid() == 1:  # PID 1 of our own namespace: /proc lists exactly the others in here
      targets = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    else:  # a subreaper: orphaned descendants become our children, so kill generation by generation
      targets = _children()
    targets = [pid for pid in targets if pid not in (1, os.getpid(), spare)]
    if not targets and not first:
      return
    for pid in targets:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    if first:  # the usual case, a lone child: wait for it instead of polling
      statuses[child] = os.waitpid(child, 0)[1]
    else:  # (targets is not empty here) killed, not yet dead: give them a moment
      time.sleep(0.0005)
    first = False
    while True:  # reap whatever is dead; the judge (spare) lives on
      try:
        pid, status = os.waitpid(-1, os.WNOHANG)
      except ChildProcessError:
        return
      if pid == 0:
        break
      statuses[pid] = status


def cleanup(workdir, cfg):
  """Removes the program's working directory and /dev/shm; returns what was left behind, if
  anything (the host then replaces this worker, so no program starts next to another's leftovers)."""
  if cfg.get("private_network"):
    # Closing a unix socket runs the kernel's collector of unix sockets in flight: a cycle of them
    # holding fds (memfds charged to the worker) that the program's own exit did not free.
    for s in socket.socketpair():
      s.close()
  if cfg.get("private_shm"):  # the worker's own tmpfs: emptied (an unmount costs an RCU grace period)
    for name in os.listdir("/dev/shm"):
      path = os.path.join("/dev/shm", name)
      if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
      else:
        os.unlink(path)
    if os.listdir("/dev/shm"):
      return "/dev/shm not emptied"
  if cfg["program_tmpfs"]:
    try:
      ns.unmount(workdir)
      os.rmdir(workdir)
    except OSError as e:
      return f"working directory not removed: {e}"
  else:
    remove_tree(workdir)
    if os.path.lexists(workdir):
      return "working directory not removed entirely"
  if cfg.get("private_network") and _tcp_sockets_left():
    return "TCP connections outlived the program (TIME_WAIT holds their ports for 60 s)"
  return memory_released(cfg)


_CHARGED = re.compile(rb"^(?:rss|anon|shmem) (\d+)$", re.M)


def _read(path):
  """A small file's bytes, without a file object (read after every program)."""
  fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  try:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
      chunks.append(chunk)
    return b"".join(chunks)
  finally:
    os.close(fd)


def charged(path):
  """Anonymous and shared (tmpfs, memfd, SysV) memory charged to the worker's cgroup, in bytes:
  what a program can leave behind (page cache of files it read is the kernel's to reclaim)."""
  return sum(map(int, _CHARGED.findall(_read(path))))


def memory_released(cfg, slack=64 << 20, wait_s=2.0):
  """Waits until the memory the program charged is released (the kernel's collector frees a
  unix-socket cycle of in-flight fds asynchronously); what is still held after
  `wait_s` retires the worker, so the next program starts in a fresh cgroup."""
  if not cfg.get("memory_stat"):
    return None
  deadline = time.monotonic() + wait_s
  while (held := charged(cfg["memory_stat"])) > cfg["memory_baseline"] + slack:
    if time.monotonic() > deadline:
      return f"{held >> 20} MiB still charged to the worker after its program ended"
    time.sleep(0.002)
  return None


_TCP_IN_USE = re.compile(rb"^TCP6?: inuse (\d+)(?: orphan \d+ tw (\d+))?", re.M)


def _tcp_sockets_left():
  """Any TCP socket in our network namespace (its counts in sockstat are per namespace; reading
  /proc/net/tcp would walk the kernel's whole connection table, ~25 ms on a busy host)."""
  for path in ("/proc/net/sockstat", "/proc/net/sockstat6"):
    try:
      if any(int(n or 0) for match in _TCP_IN_USE.findall(_read(path)) for n in match):
        return True
    except OSError:
      pass
  return False


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path):
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
