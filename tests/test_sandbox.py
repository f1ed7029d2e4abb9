"""The sandbox's contract: statuses, order, isolation seen from inside, degraded modes, recovery."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from phi1.evals import sandbox as sandbox_lib
from phi1.evals.sandbox import Program, Sandbox, check_program

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (setuid, namespaces)")


@pytest.fixture(scope="module")
def sandbox():
  with Sandbox(workers=2, timeout_s=2.0, memory_mb=512, capture_output=True) as sb:
    yield sb


def test_statuses_and_order(sandbox):
  programs = ["x = 1", "assert 1 == 2, 'nope'", "1 / 0", "raise SystemExit(3)",
              "import os\nos._exit(7)", "while True:\n  pass",
              Program("def f(x):\n  return x + 1", "assert f(1) == 2"),
              Program("def f(x):\n  return x", "assert f(1) == 2"), "def broken(:\n  pass"]
  got = [(r.status, (r.error or "").split(":")[0]) for r in sandbox.run(programs)]
  assert got == [("passed", ""), ("failed", "AssertionError"), ("error", "ZeroDivisionError"),
                 ("error", "SystemExit"),
                 ("crashed", "exited with code 7 before reporting a result"),
                 ("timeout", "no result within 2 s"), ("passed", ""), ("failed", "AssertionError"),
                 ("error", "SyntaxError")]


def test_output_is_captured_and_bounded():
  programs = ["print('hello'); import sys; print('oops', file=sys.stderr)",
              "print('y' * (8 << 20))", "import sys\nsys.stdout.buffer.write(b'\\xff' * 5000)"]
  with Sandbox(workers=1, timeout_s=5.0, max_output_bytes=1000, capture_output=True) as sb:
    small, big, binary = sb.run(programs)
  assert small.passed and small.output == "hello\noops\n"
  assert big.passed and big.output == "y" * 1000
  # Bounded in bytes after decoding: U+FFFD per undecodable byte is 3 bytes of UTF-8 (and 2 in
  # memory), so 333 of them; never an escape sequence per byte.
  assert binary.passed and binary.output == "\ufffd" * 333


def test_output_is_kept_only_when_asked():
  with Sandbox(workers=1, timeout_s=5.0) as sb:
    result, = sb.run(["print('x' * 5000)"])
  assert result.passed and result.output == ""


def test_per_program_timeout_overrides_default(sandbox):
  result, = sandbox.run([Program("import time\ntime.sleep(10)", timeout_s=0.3)])
  assert result.status == "timeout" and result.duration_s < 2.0  # its 0.3 s, not the default 2 s


def test_cpu_limit_is_a_timeout():
  with Sandbox(workers=1, timeout_s=1.0) as sb:
    # The wall clock stops it first; RLIMIT_CPU (ceil + 1 s) is the backstop in the child itself.
    assert sb.run(["while True:\n  pass"])[0].status == "timeout"


def test_workers_run_in_parallel(sandbox):
  start = time.monotonic()
  results = sandbox.run(["import time\ntime.sleep(0.5)"] * 6)
  elapsed = time.monotonic() - start
  assert all(r.passed for r in results)
  # A ratio, not a deadline (a loaded machine stretches both): 2 workers keep two programs
  # running at once, so their durations add up to about twice the wall time; serial, at most once.
  assert sum(r.duration_s for r in results) > 1.3 * elapsed


def test_temp_cwd_is_fresh_and_removed(sandbox):
  first, second = sandbox.run(["import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())",
                               "import os\nassert os.listdir('.') == [], os.listdir('.')"])
  assert first.passed and second.passed
  assert first.output.strip().startswith("/tmp/phi1-sandbox-")


@needs_root
@pytest.mark.parametrize("bwrap", [
    pytest.param(True, marks=pytest.mark.skipif(not shutil.which("bwrap"), reason="no bwrap")),
    False], ids=["bwrap", "own-namespaces"])
def test_isolation_seen_from_inside(bwrap):
  probe = ("import os, socket\n"
           "print(os.getuid(), os.getgid())\n"
           "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
           "print(caps[0])\n"
           "print(sorted(name for _, name in socket.if_nameindex()))\n"
           "print(sum(p.isdigit() for p in os.listdir('/proc')))\n"
           "print(os.getsid(0) == os.getpid())\n"
           "print(os.read(0, 10))\n")
  with Sandbox(workers=1, timeout_s=5.0, bwrap=bwrap, capture_output=True) as sb:
    result, = sb.run([probe])
  assert result.passed, result
  uid, caps, net, nprocs, leader, stdin = result.output.splitlines()
  assert uid == "65534 65534" and caps == "0000000000000000"
  assert net == "['lo']"                 # a network namespace of its own
  assert int(nprocs) <= 3                # PID namespace: the server, the program (and bwrap's init)
  assert leader == "True" and stdin == "b''"


def test_environment_is_clean(sandbox, monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
  with Sandbox(workers=1, timeout_s=2.0, capture_output=True) as sb:  # started after the setenv
    result, = sb.run(["import os\nprint(sorted(os.environ))"])
  assert result.passed and "OPENAI_API_KEY" not in result.output
  assert "sk-should-not-leak" not in result.output


def test_each_program_starts_from_the_servers_state_without_at_fork_hooks(sandbox):
  # threading's and random's at-fork hooks would run in every program's fork (~0.4 ms each time);
  # what the server set once (environment, no_new_privs, streams) is each program's own.
  probe = ("import os, sys\n"
           "print(sorted(m for m in ('threading', 'random', 'tempfile') if m in sys.modules))\n"
           "print(os.environ['HOME'] == os.environ['TMPDIR'] == os.getcwd(), os.listdir('.'))\n"
           "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')])\n"
           "open('mine', 'w').write('x')\n"
           "print(sys.stdout.line_buffering, sys.stderr is sys.stdout, repr(sys.stdin.read()))")
  first, second = sandbox.run([probe, probe])
  assert first.passed and second.passed, (first, second)
  assert first.output == second.output == "[]\nTrue []\n['1']\nTrue True ''\n"


def test_cgroup_bounds_a_forking_memory_bomb():
  # Each child stays under its own 512 MiB address-space limit; together they exceed the worker's
  # cgroup (512 + 256 tmp + 256 MiB), so the kernel kills one of them and never the host's processes.
  bomb = ("import os, time\nkids = []\nfor _ in range(4):\n  pid = os.fork()\n  if pid == 0:\n"
          "    b = bytearray(300 << 20)\n    time.sleep(1)\n    os._exit(0)\n  kids.append(pid)\n"
          "print(sorted(os.waitpid(k, 0)[1] for k in kids))")
  with Sandbox(workers=1, timeout_s=30.0, memory_mb=512, quiet=True, capture_output=True) as sb:
    if sb._pool[0].cgroup is None:
      pytest.skip("no writable memory cgroup on this machine")
    result, = sb.run([bomb])
  assert result.passed, result
  assert "9" in result.output, result.output  # a child ended by SIGKILL (the cgroup's OOM killer)


def test_the_filter_can_be_switched_off_and_says_so():
  unix_socket = "import socket\nsocket.socket(socket.AF_UNIX).close()"
  with Sandbox(workers=1, seccomp=False, quiet=True) as sb:
    unfiltered, = sb.run([unix_socket])
  assert unfiltered.passed
  assert any(m.startswith("seccomp: off (disabled by the caller)") for m in sb.protections_off)
  assert check_program(unix_socket).status == "error"  # filtered: EPERM


def test_check_program():
  assert check_program("assert sum(range(4)) == 6").passed
  assert check_program("assert sum(range(4)) == 7").status == "failed"


def test_bad_programs_rejected_early(sandbox):
  with pytest.raises(TypeError, match="must be str"):
    sandbox.run([Program(code=b"x = 1")])
  with pytest.raises(ValueError, match="timeout_s"):
    Sandbox(timeout_s=0)


def test_non_utf8_and_huge_programs(sandbox):
  surrogate = b"x = '\xff'".decode("utf-8", "surrogateescape")
  huge = "x = 1\n" + "#" * (10 << 20) + "\n"
  bad, big = sandbox.run([surrogate, huge])
  assert bad.status == "error" and "UnicodeEncodeError" in bad.error
  assert big.passed


def test_worker_death_is_a_crash_and_the_pool_recovers(sandbox):
  worker = sandbox._pool[0]
  worker.process.kill()
  worker.process.wait()
  # Whether the dead worker still took a request is a race: if it did, that program is reported
  # crashed; requests it never ran go to another worker.
  statuses = [r.status for r in sandbox.run(["x = 1"] * 4)]
  assert statuses.count("passed") >= 3 and set(statuses) <= {"passed", "crashed"}
  assert all(r.passed for r in sandbox.run(["x = 1"] * 4))


def test_degraded_mode_reports_what_is_off_and_still_kills_descendants(capsys):
  sandbox_lib._warned.clear()
  grandchild = ("import os, time\nif os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n"
                "    time.sleep(30)\n  os._exit(0)\n")
  with Sandbox(workers=1, timeout_s=2.0, bwrap=False, namespaces=False,
               drop_privileges=False, capture_output=True) as sb:
    worker_pid = sb._pool[0].process.pid
    children = f"/proc/{worker_pid}/task/{worker_pid}/children"
    judge = open(children).read().split()  # the worker's judge process, there from the start
    result, = sb.run([grandchild])
    left = open(children).read().split()
  assert result.passed and len(judge) == 1
  assert left == judge  # the subreaper killed the setsid'd grandchild
  err = capsys.readouterr().err
  assert "read-only filesystem, PID and network namespaces: off" in err
  assert "unprivileged user: off" in err
  with Sandbox(workers=1, bwrap=False, namespaces=False, drop_privileges=False):
    pass
  assert "off" not in capsys.readouterr().err  # said once per process, not per sandbox


def test_no_jax_on_the_execution_path():
  code = ("import sys\nimport phi1.evals.run, phi1.evals.cli, phi1.evals.sandbox\n"
          "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules), 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@needs_root
def test_without_bubblewrap_installed_own_namespaces_take_over(monkeypatch):
  monkeypatch.setattr(sandbox_lib.shutil, "which", lambda name: None)
  isolation = sandbox_lib.decide_isolation()
  assert isolation.bwrap is None and isolation.own_namespaces and isolation.uid == 65534
  assert any("bwrap not installed" in m for m in isolation.off)
  with pytest.raises(RuntimeError, match="bubblewrap cannot be used"):
    sandbox_lib.decide_isolation(bwrap=True)


def test_deep_tree_is_removed_without_recursion(tmp_path):
  from phi1.evals import _worker
  root = tmp_path / "workdir"
  root.mkdir()
  fd = os.open(root, os.O_RDONLY)
  for _ in range(1100):  # its full path exceeds PATH_MAX, its depth Python's recursion limit
    os.mkdir("d", dir_fd=fd)
    inner = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = inner
  os.close(os.open("leftover", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
  os.close(fd)
  assert _worker._leftovers.cleanup(str(root), {"program_tmpfs": False}) is None
  assert not root.exists()


# Speaks the worker protocol; a program containing "leave" reports, like a real worker whose
# cleanup left something behind, that it retires.
FAKE_WORKER = r'''
import json, os, struct, sys
def send(message):
  data = json.dumps(message).encode()
  os.write(1, struct.pack(">I", len(data)) + data)
send(dict(ready=True, pid=os.getpid(), protections={}))
while True:
  header = sys.stdin.buffer.read(4)
  if len(header) < 4:
    break
  request = json.loads(sys.stdin.buffer.read(struct.unpack(">I", header)[0]))
  code = sys.stdin.buffer.read(request["code_bytes"]).decode()
  sys.stdin.buffer.read(request["setup_bytes"] + request["test_bytes"])
  retire = "leave" in code
  send(dict(status="passed", error=None, duration_s=0.0, output=str(os.getpid()),
            **(dict(retire="working directory not removed") if retire else {})))
  if retire:
    break
'''


def run_on_fake_workers(monkeypatch, programs):
  """(results, sandbox): `programs` run by one FAKE_WORKER at a time ("leave" retires it)."""
  sb = Sandbox(workers=1, cgroup=False, quiet=True)
  monkeypatch.setattr(sb, "_command", lambda cgroup: [sys.executable, "-c", FAKE_WORKER])
  try:
    return sb.run(programs), sb
  finally:
    sb.close()


def test_a_worker_whose_cleanup_left_something_is_replaced(monkeypatch):
  results, sb = run_on_fake_workers(monkeypatch, ["leave", "a", "b", "leave", "c"])
  assert [r.status for r in results] == ["passed"] * 5
  pids = [r.output for r in results]
  # the requests queued behind a retiring worker ran on its replacement
  assert pids[0] != pids[1] == pids[2] == pids[3] != pids[4]
  assert sb.workers_replaced == 2


def test_a_retiring_workers_answer_is_read_when_the_next_request_finds_its_pipe_closed(monkeypatch):
  """The worker exits right after answering "leave"; the request queued behind it is written only
  once it is gone (the write fails with a broken pipe). The answer already sent still counts."""
  write = sandbox_lib._Worker.write
  writes = []

  def late_second_write(worker, data):
    writes.append(len(data))
    if len(writes) == 2:
      worker.process.wait(timeout=30)  # the worker has answered the first request and exited
    return write(worker, data)

  monkeypatch.setattr(sandbox_lib._Worker, "write", late_second_write)
  results, sb = run_on_fake_workers(monkeypatch, ["leave", "a"])
  assert [r.status for r in results] == ["passed", "passed"], results
  assert results[0].output != results[1].output and sb.workers_replaced == 1
