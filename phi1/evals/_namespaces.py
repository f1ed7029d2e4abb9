"""Namespaces, mounts and the session keyring for the sandbox's fork server (`_worker.py`), through
libc via ctypes.

Python 3.11 has no os.unshare, and mount(2) and keyctl(2) have no Python binding at all. Everything
here changes only the calling process's own namespaces and keyring, never the host's.
"""

import ctypes
import os
import signal

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
MNT_DETACH = 2
MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)
# Looked up once here (ctypes caches each function on first use): a program's fork that calls them
# finds them ready instead of resolving them in its copy-on-write memory.
for _name in ("mount", "umount2", "unshare", "prctl", "syscall"):
  getattr(_libc, _name)
del _name


def check(ret, what):
  if ret != 0:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
  check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def remount_all_read_only(keep_writable=()):
  """Read-only view of every mount, made in our private mount namespace (the host's untouched)."""
  with open("/proc/self/mountinfo") as f:
    mounts = [line.split() for line in f]
  for fields in mounts:
    target = fields[4].replace("\\040", " ")
    if target in keep_writable:
      continue
    flags = sum(MOUNT_FLAGS.get(o, 0) for o in fields[5].split(","))
    try:
      mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    except OSError:
      pass  # e.g. a mount shadowed by another one on top: not reachable anyway


# The new root is assembled on a tmpfs mounted here, then moved onto "/". Any directory would do
# that never holds an interpreter path or a device the view binds; /sys is on every Linux system.
STAGE = "/sys"
DEVICES = ("null", "zero", "full", "random", "urandom")


def _touch(path, directory):
  if directory:
    os.makedirs(path, mode=0o755, exist_ok=True)
  else:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    open(path, "a").close()


def enter_view(view, tmp_mb):
  """Makes the allow-listed view (sandbox.filesystem_view) our root: read-only binds of the listed
  paths, a minimal /dev, a fresh /proc, a root-owned /tmp. Nothing else of the host is reachable."""
  os.umask(0o022)
  # Sources opened first: the stage's tmpfs hides what lies under it (a cgroup file in /sys).
  sources = {args[0]: os.open(args[0], os.O_PATH | os.O_CLOEXEC)
             for kind, *args in view if kind == "ro-bind"}
  mount("tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
  # /tmp before the binds below it (a checkout or venv under /tmp); root's, and left writable for
  # the server, which mounts each program's own tmpfs in it.
  _touch(STAGE + "/tmp", True)
  mount("tmpfs", STAGE + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=755,size={tmp_mb}m")
  for kind, *args in view:
    if kind == "hide":  # an answer folder inside a bound tree: an empty tmpfs over it
      mount("tmpfs", STAGE + args[0], "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "mode=555,size=4k")
    elif kind == "symlink":
      target, path = args
      os.makedirs(os.path.dirname(STAGE + path), mode=0o755, exist_ok=True)
      os.symlink(target, STAGE + path)
    else:
      source, path = args
      _touch(STAGE + path, os.path.isdir(f"/proc/self/fd/{sources[source]}"))
      mount(f"/proc/self/fd/{sources[source]}", STAGE + path, None, MS_BIND | MS_REC)
  dev = STAGE + "/dev"
  _touch(dev, True)
  mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
  for name in DEVICES:
    _touch(f"{dev}/{name}", False)
    mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
  for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                       ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(target, f"{dev}/{name}")
  for path in ("/dev/shm", "/proc"):
    _touch(STAGE + path, True)
  remount_all_read_only(keep_writable=(STAGE + "/tmp",))
  for fd in sources.values():
    os.close(fd)
  os.chdir(STAGE)
  mount(STAGE, "/", None, MS_MOVE)
  os.chroot(".")
  os.chdir("/")
  mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
  mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")


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
  loopback_up()
  enter_view(cfg["view"], cfg["tmp_mb"])
  protections["namespaces"] = "on (pid, net, mount, ipc, uts; allow-listed read-only view)"


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up():
  """A new network namespace starts with `lo` down: programs' servers on 127.0.0.1 need it up."""
  import fcntl
  import socket
  import struct
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack("16sh", b"lo", 0)
    flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, request + b"\0" * 22)[:18])[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP) + b"\0" * 22)


def mount_program_tmpfs(path, uid, gid, size_mb):
  """The program's working directory: a tmpfs of its own, so removing it is one unmount."""
  owner = "" if uid is None else f",uid={uid},gid={gid}"
  mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=700{owner},size={size_mb}m")


def unmount(path):
  check(_libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")


def new_ipc_namespace():
  """SysV shared memory, semaphores and message queues a program makes go with its namespace."""
  check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")


KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219}
KEYCTL_JOIN_SESSION_KEYRING = 1


def new_session_keyring():
  """A fresh, empty session keyring: the host's (and any key stored in it) is no longer ours."""
  number = KEYCTL.get(os.uname().machine)
  if number is None:
    raise OSError(f"keyctl's system call number on {os.uname().machine} is not known here")
  if _libc.syscall(ctypes.c_long(number), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING),
                   ctypes.c_void_p(None)) < 0:
    err = ctypes.get_errno()
    raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(err)}")


def set_oom_score(score):
  try:  # os-level calls: a program's fork pays for no file object
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
  except OSError:
    return
  try:
    os.write(fd, str(score).encode())
  except OSError:
    pass  # lowering needs root; then the kernel's default choice stands
  finally:
    os.close(fd)


def prctl(option, value):
  check(_libc.prctl(option, value, 0, 0, 0), "prctl")
