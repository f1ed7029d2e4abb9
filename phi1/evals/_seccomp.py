"""The system-call filter every sandboxed program runs under (libseccomp through `pyseccomp`).

Namespaces hide the host's files, processes and network, but the kernel itself stays reachable.
This filter takes away the kernel surface a test program never needs and the escapes namespaces do
not cover (docs/sandbox.md lists which attack each line stops); every other call is allowed, so
honest programs (threads, subprocesses of python, sockets on the private loopback) run unchanged.
Denied calls fail with EPERM, as on a host that forbids them, rather than killing the program.
The sandbox's host compiles it once per process (`compiled`, libseccomp through `pyseccomp`) and
hands the BPF program to each worker's server, which loads it with one prctl after its own setup;
every program's child inherits it (attaching a filter costs ~0.1-0.2 ms of kernel work, too much
per program). The server never imports pyseccomp (which brings in subprocess, threading and
random, whose at-fork hooks every program's fork would then run). The server itself runs under
the filter, so its per-program steps stay allowed: `mount`/`umount2` (the program's tmpfs working directory) and
`unshare(CLONE_NEWIPC)` (its IPC namespace); programs run without capabilities, and with user
namespaces denied, so the kernel refuses those three to them anyway.
"""

import ctypes
import errno
import functools

# Each group, with the reason; a name this kernel or libseccomp does not know is skipped.
DENIED = {
    # Kernel keyrings are not namespaced: a key a host process stored is readable, and keys planted
    # in uid nobody's user keyring outlive the program.
    "keyrings": ("add_key", "request_key", "keyctl"),
    # Large, bug-prone interfaces no test program uses.
    "kernel surface": ("io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
                       "bpf", "perf_event_open", "fanotify_init", "open_by_handle_at",
                       "name_to_handle_at", "syslog", "kexec_load", "kexec_file_load",
                       "init_module", "finit_module", "delete_module", "reboot", "swapon",
                       "swapoff", "acct", "quotactl"),
    # New namespaces (user namespaces above all) would give back capabilities inside them.
    "namespaces and mounts": ("setns", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
                              "fsconfig", "fsmount", "fspick", "mount_setattr"),
    # Reading or writing another process's memory: the harness of a program's own fork included.
    "other processes": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"),
}
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
AF_MAX = 64                # above the kernel's own AF_MAX (46 in 6.x): those fail EAFNOSUPPORT anyway
NETLINK_ROUTE, NETLINK_MAX = 0, 32
SOCK_DGRAM, SOCK_TYPE_MASK = 2, 0xF
PR_SET_DUMPABLE = 4
LOW32 = 0xFFFFFFFF         # an int argument: the kernel reads its low 32 bits, and so must we
CLONE_NEWIPC = 0x08000000
# clone() with any of these flags makes a namespace: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET.
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000)


def _deny(seccomp, f, syscall, *args, error=errno.EPERM):
  try:
    f.add_rule(seccomp.ERRNO(error), syscall, *args)
  except (OSError, ValueError, RuntimeError):
    pass  # unknown to this kernel or libseccomp: nothing to deny


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Filter:
  """A compiled filter; `load()` installs it on the calling process and all it forks later."""
  PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2

  def __init__(self, bpf: bytes):
    self._code = ctypes.create_string_buffer(bpf, len(bpf))
    self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._code))  # 8-byte instructions
    self._prctl = ctypes.CDLL(None, use_errno=True).prctl

  def load(self):
    PR_SET_NO_NEW_PRIVS = 38  # required without CAP_SYS_ADMIN; no setuid binary then gains rights
    if self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
      raise OSError(ctypes.get_errno(), "no_new_privs not set")
    if self._prctl(self.PR_SET_SECCOMP, self.SECCOMP_MODE_FILTER, ctypes.byref(self._prog), 0, 0):
      raise OSError(ctypes.get_errno(), "seccomp filter not loaded")


@functools.lru_cache(maxsize=None)
def compiled() -> bytes:
  """The filter as a BPF program (libseccomp's export), compiled once per process; `Filter` loads
  it (ImportError: pyseccomp missing; OSError, RuntimeError or AttributeError: libseccomp missing
  or too old)."""
  import tempfile

  import pyseccomp as seccomp

  deny = functools.partial(_deny, seccomp)
  f = seccomp.SyscallFilter(seccomp.ALLOW)
  for names in DENIED.values():
    for name in names:
      deny(f, name)
  # Sockets: IPv4, IPv6 and route netlink (getaddrinfo, if_nameindex) only. Filesystem sockets
  # ignore the network namespace and a read-only bind does not stop connect(): no AF_UNIX socket()
  # at all; other netlink families reach the host (kobject uevents: its device events), AF_VSOCK
  # reaches the hypervisor's host, the rest is kernel surface. Compared on the low 32 bits, as the
  # kernel reads an int: (1 << 32) | AF_UNIX is AF_UNIX.
  for family in range(AF_MAX):
    if family not in (AF_INET, AF_INET6, AF_NETLINK):
      deny(f, "socket", seccomp.Arg(0, seccomp.MASKED_EQ, LOW32, family))
  for protocol in range(NETLINK_MAX):
    if protocol != NETLINK_ROUTE:
      deny(f, "socket", seccomp.Arg(0, seccomp.MASKED_EQ, LOW32, AF_NETLINK),
            seccomp.Arg(2, seccomp.MASKED_EQ, LOW32, protocol))
  # socketpair() makes a connected pair that reaches nothing outside; but a datagram one can be
  # disconnected and sent to any path: stream and seqpacket pairs only.
  for family in range(AF_MAX):
    if family != AF_UNIX:
      deny(f, "socketpair", seccomp.Arg(0, seccomp.MASKED_EQ, LOW32, family))
  deny(f, "socketpair", seccomp.Arg(1, seccomp.MASKED_EQ, SOCK_TYPE_MASK, SOCK_DGRAM))
  # Dumpable again, a process's memory is open to its own forks through /proc/PID/mem.
  deny(f, "prctl", seccomp.Arg(0, seccomp.MASKED_EQ, LOW32, PR_SET_DUMPABLE),
        seccomp.Arg(1, seccomp.NE, 0))
  for flag in CLONE_NEW_FLAGS:
    deny(f, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
  deny(f, "unshare", seccomp.Arg(0, seccomp.NE, CLONE_NEWIPC))  # the server's per-program step
  # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall back to clone.
  deny(f, "clone3", error=errno.ENOSYS)
  with tempfile.TemporaryFile() as bpf:
    f.export_bpf(bpf)
    bpf.seek(0)
    return bpf.read()
