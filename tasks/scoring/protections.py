"""Finding what this machine allows the sandbox: which interpreter the sandbox user can run, and
which protections of tasks/scoring/confinement.py the kernel grants (each tried on a throwaway
child). What could not be set up is recorded in the plan's notes (the sandbox's `info()` reports
them in results.json), never silently assumed. Found once per process, user and interpreter.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace

from qwen_eval.tasks.scoring.confinement import PROGRAM_FILE, SAFE_PATH, Limits, Plan, child_setup, environment, write_file

_PLANS: dict[tuple[str, str | None], Plan] = {}
_PLANS_LOCK = threading.Lock()


def try_spawn(plan: Plan, argv: list[str] | None = None) -> str | None:
    """Start `python -I -c ...` under `plan`; None when it ran, else why not."""
    workdir = tempfile.mkdtemp(prefix="qwen-eval-sandbox-probe-")
    try:
        write_file(os.path.join(workdir, PROGRAM_FILE), b"", plan.uid, plan.gid)
        if plan.uid is not None:
            os.chown(workdir, plan.uid, plan.gid)
        proc = subprocess.run(argv or [plan.python, "-I", "-c", "import os; os.listdir('.')"], cwd=workdir,
                              env=environment(workdir, "probe"), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30, start_new_session=True,
                              preexec_fn=child_setup(plan, Limits(), 256, workdir))
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        return f"exit {proc.returncode}" + (f" ({tail[0]})" if tail else "")
    return None


def detect(user: str, python: str | None) -> Plan:
    notes: list[str] = []
    root = os.geteuid() == 0
    uid = gid = None
    name = pwd.getpwuid(os.geteuid()).pw_name if not root else user
    if root:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise RuntimeError(f"sandbox: user {user!r} does not exist; set task.sandbox.user to an "
                               f"unprivileged user") from None
        uid, gid = entry.pw_uid, entry.pw_gid
        if uid == 0:
            raise RuntimeError(f"sandbox: user {user!r} is root; set task.sandbox.user to an unprivileged user")
    candidates = [python] if python else [sys.executable] + [
        p for p in (shutil.which("python3", path=SAFE_PATH),) if p and p != sys.executable]
    chosen = None
    for candidate in candidates:
        why = try_spawn(Plan(candidate, "", name, uid, gid))
        if why is None:
            chosen = candidate
            break
        notes.append(f"{candidate} cannot run as {name}: {why}")
    if chosen is None:
        raise RuntimeError(f"sandbox: no Python interpreter runs as user {name} ({'; '.join(notes)}); "
                           f"set task.sandbox.python=PATH to one it can execute")
    version = subprocess.run([chosen, "-I", "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    base = Plan(chosen, version, name, uid, gid)
    wanted = dict(network_namespace=True, pid_namespace=True, ipc_namespace=True, private_tmp=True,
                  no_new_privs=True, user_namespace=not root)
    plan = replace(base, **wanted)
    if try_spawn(plan) is None:
        return replace(plan, notes=tuple(notes))
    # Something is refused: keep each protection that works on its own (with the user namespace
    # when not root, which the others need there).
    userns = not root and try_spawn(replace(base, user_namespace=True)) is None
    if not root and not userns:
        notes.append("user namespaces are not available to this user: no namespaces")
    working = {"user_namespace": userns}
    for key in ("network_namespace", "pid_namespace", "ipc_namespace", "private_tmp", "no_new_privs"):
        if key != "no_new_privs" and not root and not userns:
            working[key] = False
            continue
        why = try_spawn(replace(base, user_namespace=userns, **{key: True}))
        working[key] = why is None
        if why is not None:
            notes.append(f"{key} refused: {why}")
    plan = replace(base, **working)
    if try_spawn(plan) is not None:  # each alone works but not together: the safe minimum
        notes.append("the protections that work alone fail together; running without namespaces")
        plan = replace(base, no_new_privs=working["no_new_privs"])
    return replace(plan, notes=tuple(notes))


def plan_for(user: str, python: str | None) -> Plan:
    with _PLANS_LOCK:
        key = (user, python)
        if key not in _PLANS:
            _PLANS[key] = detect(user, python)
        return _PLANS[key]
