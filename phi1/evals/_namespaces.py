"""Namespaces and mounts for the sandbox's fork server (`_worker.py`), through libc via ctypes.

Python 3.11 has no os.unshare, and mount(2) has no Python binding at all. Everything here changes
only the calling process's own namespaces, never the host's.
"""

import ctypes
import os
import signal

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)


def check(ret, what):
  if ret != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
  check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def remount_all_read_only():
  """Read-only view of every mount, made in our private mount namespace (the host's untouched)."""
  with open("/proc/self/mountinfo") as f:
    mounts = [line.split() for line in f]
  for fields in mounts:
    target = fields[4].replace("\\040", " ")
    flags = sum(MOUNT_FLAGS.get(o, 0) for o in fields[5].split(","))
    try:
      mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    except OSError:
      pass  # e.g. a mount shadowed by another one on top: not reachable anyway


def mask(masks):
  """Hides each directory behind an empty tmpfs and binds the listed paths back inside it."""
  if not masks:
    return
  stage = "/tmp"  # staged through a throw-away tmpfs, since a mask hides the paths it re-shows
  mount("tmpfs", stage, "tmpfs", 0, "mode=700")
  staged = []
  for i, (_, paths) in enumerate(masks):
    for j, path in enumerate(paths):
      os.makedirs(f"{stage}/{i}.{j}")
      mount(path, f"{stage}/{i}.{j}", None, MS_BIND | MS_REC)
      staged.append((f"{stage}/{i}.{j}", path))
  for mask, _ in masks:
    mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
  for source, path in staged:
    os.makedirs(path, exist_ok=True)
    mount(source, path, None, MS_MOVE)


def enter_namespaces(cfg, protections):
  """Own namespaces as root: the caller forks, and its child becomes PID 1 of the new namespace."""
  try:
    check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS),
           "unshare")
  except OSError as e:
    protections["namespaces"] = f"off ({e})"
    return
  pid = os.fork()
  if pid:  # the outer process only waits, so the host's kill of it tears the namespace down
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
  prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
  mount("none", "/", None, MS_REC | MS_PRIVATE)
  mask(cfg["masks"])
  if cfg["read_only"]:
    remount_all_read_only()
    protections["read_only_fs"] = "on (remounted read-only in a private mount namespace)"
  mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
  # Root-owned 0755: a program writes only in its own working directory, which is removed after it.
  for path in ("/tmp", "/dev/shm"):
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=755,size={cfg['tmp_mb']}m")
  protections["namespaces"] = "on (pid, net, mount, ipc, uts)"


def set_oom_score(score):
  try:
    with open("/proc/self/oom_score_adj", "w") as f:
      f.write(str(score))
  except OSError:
    pass  # lowering needs root; then the kernel's default choice stands


def prctl(option, value):
  check(_libc.prctl(option, value, 0, 0, 0), "prctl")
