"""Run untrusted Python (generated code and its tests) in a sandbox.

Each run gets a fresh scratch directory, a child process of the base interpreter (``-I -S -B``:
no site-packages, no user site, no environment, no ``.pyc`` writes, so neither fedft nor the
repository's virtual environment is importable), a minimal environment (``HOME`` and ``TMPDIR``
in the scratch directory), and these layers:

1. **Limits** (``resource``, always): wall-clock timeout, after which the child's whole process
   group is killed; CPU seconds; address space (memory); written file size (which also caps
   stdout and stderr: they go to files, never to an unbounded pipe); open files; no core dumps.
2. **An audit hook** (PEP 578, always; installed before the code runs and not removable from
   Python). It refuses:
   - process creation (fork, exec, spawn, ``subprocess``, ``os.system``) and signals;
   - sockets;
   - ``ctypes`` and ``_posixsubprocess``;
   - writing, deleting, renaming or listing anything outside the scratch directory;
   - reading outside the scratch directory and the standard library.

   Refused operations raise ``PermissionError`` in the child. On its own, this layer is a guard
   against accidents and naive hostile code, not a security boundary: Python code can reach
   interpreter internals.
3. **OS isolation**, where the machine allows it:
   - as root: a new network namespace with no interfaces, and then, where ``nobody`` can reach
     the interpreter, that unprivileged user, so file permissions protect the host and the
     process limit stops fork bombs;
   - otherwise: a new user and network namespace when unprivileged namespaces are enabled.

:attr:`ExecResult.isolation` lists the layers that were active for a run.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal["ok", "error", "timeout"]
NOBODY = 65534
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

# Runs first in the child: the audit hook, then the user's file as __main__.
_PRELUDE = textwrap.dedent('''
    import os, sys
    _SCRATCH = os.path.realpath(os.getcwd())
    _READ = (_SCRATCH, os.path.realpath(sys.base_prefix), "/dev/null", "/dev/urandom", "/dev/zero")
    _DENY = frozenset({"os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system",
        "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill",
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
        "socket.gethostbyname", "os.setuid", "os.chroot", "ctypes.dlopen", "os.startfile"})
    _WRITE_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.replace", "os.mkdir", "os.chmod",
        "os.chown", "os.link", "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move",
        "os.chdir", "os.chflags", "os.setxattr", "os.removexattr"})
    _BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "socket", "_socket"})

    def _inside(path, roots):
        try:
            p = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

    def _hook(event, args, _SCRATCH=_SCRATCH, _READ=_READ, _DENY=_DENY, _WRITE_EVENTS=_WRITE_EVENTS,
              _BLOCKED_IMPORTS=_BLOCKED_IMPORTS, _inside=_inside):
        if event in _DENY:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in _BLOCKED_IMPORTS:
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if not _inside(path, (_SCRATCH,) if writing else _READ):
                raise PermissionError(f"sandbox: open {path!r} is outside the scratch directory")
        elif event in _WRITE_EVENTS:
            for a in args:
                if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a, (_SCRATCH,)):
                    raise PermissionError(f"sandbox: {event} {a!r} is outside the scratch directory")
        elif event in ("os.listdir", "os.scandir", "glob.glob"):
            if args and args[0] is not None and not _inside(args[0], _READ):
                raise PermissionError(f"sandbox: {event} {args[0]!r} is outside the scratch directory")

    sys.addaudithook(_hook)
    del _hook, _inside
    sys.path.insert(0, _SCRATCH)  # the files written beside main.py are importable
    import runpy
    runpy.run_path("main.py", run_name="__main__")
''')


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    timeout_s: float = 10.0  # wall clock, then the process group is killed
    cpu_s: int = 10
    memory_mb: int = 512  # address space
    output_kb: int = 256  # each of stdout / stderr, and any file the code writes
    open_files: int = 64
    processes: int = 1  # effective where the child runs as an unprivileged user

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "output_kb", "open_files", "processes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox Limits.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ExecResult:
    status: Status  # ok: exit 0; error: non-zero exit or killed by a limit; timeout: wall clock
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's included


def _unshare(flags: int) -> bool:
    return _libc().unshare(flags) == 0


def _preexec(limits: Limits, scratch: str, netns: bool, drop: bool, userns: bool) -> None:
    """In the child, before exec: namespaces, privileges, then the limits, address space last
    (the parent's address space may already exceed it; nothing may allocate after it)."""
    os.setsid()
    if netns:
        _unshare(_CLONE_NEWNET)
    if drop:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    elif userns:
        _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    os.chdir(scratch)
    limits_ = [(resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_FSIZE, limits.output_kb * 1024),
               (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, limits.open_files)]
    if drop:
        limits_.append((resource.RLIMIT_NPROC, limits.processes))
    limits_.append((resource.RLIMIT_AS, limits.memory_mb * 2**20))
    for res, val in limits_:
        resource.setrlimit(res, (val, val))


@functools.cache
def _can_unshare(flags: int) -> bool:
    """Whether this process may create the namespaces ``flags`` (tried in a forked child)."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:  # pragma: no cover - child
        os._exit(0 if _unshare(flags) else 1)
    return os.waitpid(pid, 0)[1] == 0


def _world_usable(exe: str) -> bool:
    """Whether an unprivileged user can run ``exe`` and read its standard library (every parent
    directory searchable by others; a pyenv under a 0700 /root is not)."""
    import stat
    import sysconfig

    def ok(path: str, bits: int) -> bool:
        p = Path(path).resolve()
        dirs_ok = all(os.stat(d).st_mode & stat.S_IXOTH for d in p.parents)
        return dirs_ok and (os.stat(p).st_mode & bits) == bits

    return ok(exe, stat.S_IXOTH | stat.S_IROTH) and ok(sysconfig.get_paths()["stdlib"], stat.S_IXOTH | stat.S_IROTH)


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def run_python(code: str, limits: Limits | None = None, files: dict[str, str] | None = None) -> ExecResult:
    """Run ``code`` as ``__main__`` in a fresh scratch directory (``files`` written beside it,
    e.g. the module under test) under :class:`Limits`; nothing of the host is changed."""
    limits = limits or Limits()
    exe = getattr(sys, "_base_executable", None) or sys.executable
    _libc()  # loaded here, never in a forked child
    root = os.geteuid() == 0
    drop = root and _world_usable(exe)  # run as nobody where nobody can reach the interpreter
    netns = root and _can_unshare(_CLONE_NEWNET)
    userns = not root and _can_unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    isolation = ("process", "rlimits", "audit-hook") + (("netns",) if netns else ()) \
        + (("nobody",) if drop else ()) + (("userns", "netns") if userns else ())
    base = Path(tempfile.mkdtemp(prefix="fedft-sandbox-"))
    scratch, out_dir = base / "scratch", base / "out"
    scratch.mkdir()
    out_dir.mkdir()
    try:
        for name, text in {**(files or {}), "main.py": code}.items():
            target = (scratch / name).resolve()
            if scratch.resolve() not in target.parents:
                raise ValueError(f"sandbox file name {name!r} leaves the scratch directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        if drop:
            for p in [base, scratch, *scratch.rglob("*")]:
                os.chown(p, NOBODY, NOBODY)
            os.chmod(base, 0o711)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8"}
        cap = limits.output_kb * 1024
        t0 = time.monotonic()
        with open(out_dir / "stdout", "wb") as so, open(out_dir / "stderr", "wb") as se:
            proc = subprocess.Popen(
                [exe, "-I", "-S", "-B", "-c", _PRELUDE], cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                stdout=so, stderr=se, close_fds=True,
                preexec_fn=lambda: _preexec(limits, str(scratch), netns, drop, userns),  # noqa: PLW0108
            )
            status: Status
            try:
                rc: int | None = proc.wait(timeout=limits.timeout_s)
                status = "ok" if rc == 0 else "error"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # anything the code left behind
                except ProcessLookupError:
                    pass
                proc.wait()
        return ExecResult(status, rc, _read(out_dir / "stdout", cap), _read(out_dir / "stderr", cap),
                          time.monotonic() - t0, isolation)
    finally:
        shutil.rmtree(base, ignore_errors=True)
