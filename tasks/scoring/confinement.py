"""What confines one program the sandbox runs (tasks/scoring/sandbox.py starts it): the limits, the
protections this machine grants (a `Plan`, found by tasks/scoring/protections.py), and the set-up
the forked child does before it executes the runner.

The child gets resource limits (address space, CPU seconds, file size, open files, processes, no
core files) and a scrubbed environment. Where the plan has them, it also gets new network, PID, IPC
and mount namespaces: no network but a down loopback; every process it starts dies with it; the
world-writable directories (/tmp, /var/tmp, /dev/shm, /run/lock) and the working directory are
small private tmpfs mounts, so nothing it writes reaches the host disk. Running as root, the child
drops to an unprivileged user (`nobody`) so file permissions and RLIMIT_NPROC bind and the harness
cannot be signalled; not root, it enters a user namespace for the same namespaces.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
from dataclasses import dataclass
from typing import Callable

# clone(2) / mount(2) flags (linux/sched.h, linux/mount.h)
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = \
    0x00020000, 0x08000000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS = 38

# The directories any user may write to on a Debian-like system; each gets a private tmpfs.
WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
PROGRAM_FILE = "program.py"


@dataclass(frozen=True)
class Limits:
    """Per-program limits. cpu_seconds None = the wall timeout rounded up."""

    timeout: float = 10  # wall-clock seconds per program (written 10: the config shows it as the YAML did)
    memory_mb: int = 1024  # RLIMIT_AS
    cpu_seconds: int | None = None  # RLIMIT_CPU
    file_size_mb: int = 16  # RLIMIT_FSIZE: the largest file a program may write
    disk_mb: int = 64  # size of each private tmpfs (working directory, /tmp, ...)
    open_files: int = 128  # RLIMIT_NOFILE
    max_processes: int = 32  # RLIMIT_NPROC headroom per program (processes and threads)
    output_bytes: int = 64 * 1024  # stdout / stderr kept per stream (the last bytes)


@dataclass(frozen=True)
class Plan:
    """How children are set up on this machine (found once per user and interpreter by protections.plan_for)."""

    python: str
    python_version: str
    user: str
    uid: int | None  # switch to this uid/gid (running as root), else None
    gid: int | None
    user_namespace: bool = False
    network_namespace: bool = False
    pid_namespace: bool = False
    ipc_namespace: bool = False
    private_tmp: bool = False  # mount namespace with tmpfs over WRITABLE_DIRS and the working dir
    no_new_privs: bool = False
    notes: tuple[str, ...] = ()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, uid: int | None, gid: int | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    if uid is not None:
        os.chown(path, uid, gid)


def child_setup(plan: Plan, limits: Limits, nproc: int, workdir: str | None) -> Callable[[], None]:
    """The preexec_fn: runs in the forked child before exec. Everything it calls is bound here,
    in the parent, and it raises on any step that fails (the spawn then fails loudly)."""
    cpu = limits.cpu_seconds or max(1, math.ceil(limits.timeout))
    # (which, (soft, hard)) built here: once RLIMIT_AS binds, the forked child, which still has the
    # harness's address space (gigabytes with a model loaded), can allocate nothing more, so the
    # limits are set last, with nothing left to build.
    rlimits = [(resource.RLIMIT_CORE, (0, 0)),
               (resource.RLIMIT_CPU, (cpu, cpu + 1)),
               (resource.RLIMIT_FSIZE, (limits.file_size_mb << 20, limits.file_size_mb << 20)),
               (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
               (resource.RLIMIT_AS, (limits.memory_mb << 20, limits.memory_mb << 20))]
    if plan.uid is not None or plan.user_namespace:  # root ignores RLIMIT_NPROC
        rlimits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
    flags = ((CLONE_NEWNET if plan.network_namespace else 0) | (CLONE_NEWPID if plan.pid_namespace else 0)
             | (CLONE_NEWIPC if plan.ipc_namespace else 0) | (CLONE_NEWNS if plan.private_tmp else 0))
    outer_uid, outer_gid = os.getuid(), os.getgid()
    tmpfs = f"size={limits.disk_mb}m,nr_inodes=16384,mode=1777".encode()
    mounts = [d for d in WRITABLE_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    setrlimit, unshare, mount, prctl = resource.setrlimit, _libc.unshare, _libc.mount, _libc.prctl
    uid, gid = plan.uid, plan.gid

    def setup() -> None:
        if plan.user_namespace:
            _check(unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{outer_uid} {outer_uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{outer_gid} {outer_gid} 1")
        if flags:
            _check(unshare(flags), "unshare")
        if plan.private_tmp and workdir is not None:
            program = read_file(os.path.join(workdir, PROGRAM_FILE))
            _check(mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
            for d in mounts:
                _check(mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs), f"mount tmpfs {d}")
            if os.path.isdir(workdir):  # not under one of the mounts: give it a tmpfs of its own
                _check(mount(b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs), "mount tmpfs")
            else:
                os.makedirs(workdir, 0o700)
            if uid is not None:
                os.chown(workdir, uid, gid)
            os.chmod(workdir, 0o700)
            write_file(os.path.join(workdir, PROGRAM_FILE), program, uid, gid)
            os.chdir(workdir)
        if plan.no_new_privs:
            _check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        for which, pair in rlimits:  # lowering a limit needs no privilege, so after setuid is fine
            setrlimit(which, pair)

    return setup


def environment(workdir: str, marker: str) -> dict[str, str]:
    """A minimal environment: nothing of the harness's (tokens, keys, paths) reaches a program."""
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": "/tmp",
            "QWEN_EVAL_SANDBOX": marker}
