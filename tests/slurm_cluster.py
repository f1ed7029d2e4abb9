"""A real one-node Slurm cluster for the tests: Debian's slurm-wlm (slurmctld + slurmd) and munge,
started as root from a temporary directory and stopped by pid at the end.

  slurm_cluster   session fixture (a SlurmCluster); the test files that use it import it. However
                  many files import it, one cluster serves the session: it starts with the first
                  user and stops after the last one's teardown.

The configuration is the smallest that runs real jobs: proctrack/linuxproc and task/none (no
cgroups), select/cons_tres over this machine's CPUs and memory, one partition `debug`, no accounting
(so `sacct` has nothing: callers fall back to squeue), state, spool and logs under the temporary
directory, short KillWait/MinJobAge so a stop is quick, and a short credential lifetime
(cred_expire) so a requeued job starts again within seconds. `SLURM_CONF` points sbatch, squeue and
scontrol (and the jobs, which inherit the environment) at it while the cluster is up.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest

PARTITION = "debug"
NODE = "phi1node"
KILL_WAIT_S = 30  # SIGTERM -> SIGKILL when a job is cancelled or requeued (Slurm's default)
# A requeued job waits this long (+1 s) before it may start again (Slurm's default: 120 s).
CRED_EXPIRE_S = 10
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel",
            "sinfo")


def skip_reason() -> str | None:
  """Why this machine cannot start the cluster (None: it can)."""
  if os.geteuid() != 0:
    return "the Slurm test cluster starts slurmctld/slurmd/munged as root; this runner is not root"
  missing = [b for b in BINARIES if not shutil.which(b)]
  if missing:
    return (f"Slurm test cluster: {', '.join(missing)} not installed (`make system-deps` installs "
            "slurm-wlm and munge)")
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _memory_mb() -> int:
  with open("/proc/meminfo") as f:
    total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
  return total_kb // 1024 - 512  # slurmd refuses a node that claims more than it has


class SlurmCluster:
  def __init__(self, root: pathlib.Path):
    self.root = pathlib.Path(root)
    self.conf = self.root / "slurm.conf"
    self.spool = self.root / "spool"
    self.procs: dict[str, subprocess.Popen] = {}
    self.cpus = os.cpu_count() or 1
    self._old_conf = None

  # ------------------------------------------------------------------------------------ commands
  def run(self, *argv, check=True, timeout=60) -> str:
    """A Slurm client command against this cluster; its stdout."""
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "SLURM_CONF": str(self.conf)})
    if check and out.returncode:
      raise RuntimeError(f"{' '.join(map(str, argv))} failed ({out.returncode}): {out.stderr}")
    return out.stdout

  def job_state(self, job_id) -> str:
    """PENDING, RUNNING, COMPLETED, FAILED, ... while slurmctld remembers the job ('' after)."""
    out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
    for field in out.split():
      if field.startswith("JobState="):
        return field.split("=", 1)[1]
    return ""

  def wait_idle(self, timeout=600) -> None:
    """Until no job is queued or running (raises with the queue after `timeout` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      if not self.run("squeue", "-h", "-o", "%i").split():
        return
      time.sleep(0.5)
    raise TimeoutError(f"jobs still queued after {timeout} s:\n"
                       + self.run("squeue", "-o", "%i %j %T %r", check=False))

  # ------------------------------------------------------------------------------- start / stop
  def start(self) -> "SlurmCluster":
    for sub in ("state", "spool", "log", "munge"):
      (self.root / sub).mkdir(parents=True, exist_ok=True)
    munge = self.root / "munge"
    munge.chmod(0o700)
    key = munge / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}", "--force"], check=True,
                   capture_output=True)
    key.chmod(0o600)
    socket_path = munge / "munge.socket"
    self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                           f"--socket={socket_path}", f"--pid-file={munge}/munged.pid",
                           f"--seed-file={munge}/munged.seed", f"--log-file={munge}/munged.log"])
    self._wait(lambda: socket_path.exists(), "munged's socket", munge / "munged.log")
    self.conf.write_text(self._config(socket_path))
    self._old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(self.conf)
    log = self.root / "log"
    self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)],
                log / "slurmctld.out")
    self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)], log / "slurmd.out")
    self._wait(lambda: self.run("sinfo", "-h", "-n", NODE, "-o", "%t", check=False).strip()
               == "idle", f"node {NODE} idle", log / "slurmctld.log")
    return self

  def stop(self) -> None:
    """Cancels what is left, stops the daemons by pid, and kills any job step they left behind."""
    if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
      self.run("scancel", "--partition", PARTITION, check=False)
      try:
        self.wait_idle(timeout=KILL_WAIT_S + 10)
      except TimeoutError:
        pass
    for name in ("slurmd", "slurmctld", "munged"):
      proc = self.procs.pop(name, None)
      if proc and proc.poll() is None:
        proc.terminate()
        try:
          proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
          proc.kill()
          proc.wait()
    for pid in self.leftover_pids():  # job steps (slurmstepd) outlive slurmd when it stops
      try:
        os.kill(pid, 9)
      except ProcessLookupError:
        pass
    if self._old_conf is None:
      os.environ.pop("SLURM_CONF", None)
    else:
      os.environ["SLURM_CONF"] = self._old_conf

  def leftover_pids(self) -> list[int]:
    """Processes that still hold a file under this cluster's directory (its daemons or steps)."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
      if not proc.name.isdigit() or int(proc.name) == os.getpid():
        continue
      try:
        if any(os.readlink(fd).startswith(str(self.root)) for fd in (proc / "fd").iterdir()):
          pids.append(int(proc.name))
      except OSError:  # gone, or not ours to read
        continue
    return pids

  def _spawn(self, name, argv, out_path=None):
    out = open(out_path or os.devnull, "ab")
    self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()

  def _wait(self, ready, what, log_path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
      dead = [n for n, p in self.procs.items() if p.poll() is not None]
      if dead:
        break
      if ready():
        return
      time.sleep(0.2)
    logs = "".join(f"\n--- {p}\n" + p.read_text()[-1500:]
                   for p in [log_path, *sorted((self.root / "log").glob("*"))] if p.is_file())
    self.stop()
    raise RuntimeError(f"Slurm test cluster: no {what} after {timeout} s "
                       f"(exited: {[n for n, p in self.procs.items() if p.poll() is not None]}){logs}")

  def _config(self, munge_socket) -> str:
    host = socket.gethostname().split(".")[0]
    r = self.root
    return f"""\
ClusterName=phi1test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire={CRED_EXPIRE_S}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait={KILL_WAIT_S}
MinJobAge=30
InactiveLimit=0
DefMemPerCPU=1024
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


_shared: dict = {"cluster": None, "users": 0}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
  reason = skip_reason()
  if reason:
    pytest.skip(reason)
  if _shared["cluster"] is None:
    _shared["cluster"] = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
  _shared["users"] += 1
  yield _shared["cluster"]
  _shared["users"] -= 1
  if not _shared["users"]:
    cluster, _shared["cluster"] = _shared["cluster"], None
    cluster.stop()
