"""Run untrusted Python (a model's PAL program) in a fresh, locked-down subprocess.

Every limit is enforced by the Linux kernel on the child process, set before the untrusted code runs
and impossible to lift from inside:

- **no network**: a new network namespace (``unshare(CLONE_NEWNET)``; as a non-root user inside a new
  user namespace) holds only a loopback interface, down — nothing on the host, not even 127.0.0.1, is
  reachable; Landlock (ABI ≥ 4) also denies every TCP bind and connect;
- **no writes outside its temporary folder**: Landlock [LL] allows creating, writing, truncating,
  renaming and removing files only beneath that folder (reads stay allowed: the interpreter needs its
  standard library); as root the child first becomes ``nobody``, so it holds no capability either;
- **no new processes**: RLIMIT_NPROC = 0 (a fork bomb's first fork fails; root is exempt from this
  limit, hence ``nobody``);
- **time**: RLIMIT_CPU (the kernel kills a busy loop) and a wall-clock limit (the parent kills the
  process group of one that sleeps);
- **memory**: RLIMIT_AS (an allocation past it raises MemoryError); **output**: its stdout/stderr go
  to files the parent opened, capped by RLIMIT_FSIZE, as is every file it writes.

A kernel without Landlock or namespaces makes ``run_python`` raise ``SandboxUnavailable``: the code
never runs with weaker isolation. The interpreter starts isolated (``-I -S``: no environment
variables, no site-packages, no current folder on the path), with an empty environment.

[LL] The Linux kernel documentation, "Landlock: unprivileged access control" (userspace-api/landlock).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError

NOBODY = 65534
_UNAVAILABLE = 97  # the bootstrap's exit status when the kernel refuses a protection

# Runs first in the child (python -I -S -c BOOTSTRAP WORK MEMORY_BYTES CPU_SECONDS OUTPUT_BYTES READABLE...),
# then runs WORK/program.py. Numbers from linux/landlock.h, linux/sched.h, linux/prctl.h,
# linux/capability.h; the Landlock syscalls are 444–446 on every architecture that has them.
_BOOTSTRAP = r"""
import ctypes, os, resource, sys
work, memory, cpu, output, readable = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def refuse(what):
    sys.stderr.write("sandbox unavailable: %s (%s)\n" % (what, os.strerror(ctypes.get_errno())))
    os._exit(97)

root = os.geteuid() == 0
if libc.unshare(0x40000000 if root else 0x10000000 | 0x40000000) != 0:  # CLONE_NEWNET (| CLONE_NEWUSER)
    refuse("a network namespace")
if root:  # become nobody, keeping only CAP_DAC_READ_SEARCH (the interpreter may live in root's home); Landlock
    libc.prctl(8, 1, 0, 0, 0)  # below confines those reads. PR_SET_KEEPCAPS across setuid
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    header, caps = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)(1 << 2, 1 << 2, 0, 0, 0, 0)
    if libc.capset(header, caps) != 0:  # _LINUX_CAPABILITY_VERSION_3: effective = permitted = {DAC_READ_SEARCH}
        refuse("dropping capabilities")
    libc.prctl(8, 0, 0, 0, 0)

abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
if abi < 1:
    refuse("Landlock")
read = 1 << 0 | 1 << 2 | 1 << 3  # EXECUTE, READ_FILE, READ_DIR
write = 1 << 1 | 1 << 4 | 1 << 5 | sum(1 << b for b in range(6, 13))  # WRITE_FILE, REMOVE_*, MAKE_*
write |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)  # REFER (renames), TRUNCATE
fields = [read | write, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0]  # fs; net: BIND|CONNECT_TCP; scoped: unix, signals
size = 24 if abi >= 6 else 16 if abi >= 4 else 8
attr = (ctypes.c_uint64 * 3)(*fields)
ruleset = libc.syscall(444, ctypes.byref(attr), size, 0)
if ruleset < 0:
    refuse("a Landlock ruleset")

class Beneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

for path, access in [(work, read | write)] + [(p, read) for p in readable if os.path.exists(p)]:
    fd = os.open(path, os.O_PATH)
    if not os.path.isdir(path):
        access &= 1 << 0 | 1 << 1 | 1 << 2 | (1 << 14 if abi >= 3 else 0)  # a file takes file rights only
    if libc.syscall(445, ruleset, 1, ctypes.byref(Beneath(access, fd)), 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
        refuse("a Landlock rule for " + path)
    os.close(fd)
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.syscall(446, ruleset, 0) != 0:  # PR_SET_NO_NEW_PRIVS; restrict_self
    refuse("Landlock enforcement")
os.close(ruleset)

for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, output),
                     (resource.RLIMIT_NPROC, 0), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 64)):
    resource.setrlimit(limit, (value, value))
del ctypes, libc, Beneath, attr, refuse
os.chdir(work)
sys.argv = ["program.py"]
with open("program.py") as f:
    source = f.read()
exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


def _readable() -> list[str]:
    """What the child may read besides its folder: the interpreter's installation and the shared libraries
    its extension modules load (nothing else: not the user's files, not /proc, not /etc)."""
    import sysconfig

    paths = {sys.base_prefix, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"],
             "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache", "/dev/null", "/dev/urandom"}
    return sorted(paths)


class SandboxUnavailable(RlhfkitError):
    """This kernel cannot give the isolation the sandbox promises (no Landlock or no namespaces)."""


@dataclass
class RunResult:
    """What a sandboxed program did. ``ok``: it exited 0 within its limits."""

    stdout: str
    stderr: str
    returncode: int  # negative: killed by that signal
    timed_out: bool  # killed at the wall-clock limit
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def reason(self) -> str:
        """One line on why it failed ('' when it did not)."""
        if self.ok:
            return ""
        if self.timed_out:
            return "killed: wall-clock time limit"
        if self.returncode == -signal.SIGXCPU or self.returncode == -signal.SIGKILL:
            return "killed: CPU time limit"
        if self.returncode == -signal.SIGXFSZ:
            return "killed: output size limit"
        last = self.stderr.strip().splitlines()
        return last[-1] if last else f"exit status {self.returncode}"


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 256, output_kb: int = 256) -> RunResult:
    """Run ``code`` as a Python program in a fresh sandboxed process (see the module docstring).

    It starts in an empty temporary folder — the only place it may write — that is deleted afterwards.
    Raises SandboxUnavailable if the kernel cannot enforce the sandbox.
    """
    private = Path(tempfile.mkdtemp(prefix="rlhfkit-sandbox-"))  # 0700: the parent's; the child cannot open it
    work = private / "work"
    work.mkdir()
    (work / "program.py").write_text(code)
    if os.geteuid() == 0:  # the child runs as nobody: give it its folder
        os.chmod(private, 0o711)
        os.chown(work, NOBODY, NOBODY)
    cpu = max(1, math.ceil(timeout_s))
    cmd = [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, str(work), str(memory_mb << 20), str(cpu),
           str(output_kb << 10), *_readable()]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    start = time.monotonic()
    try:
        with open(private / "stdout", "w+b") as out, open(private / "stderr", "w+b") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:  # the whole session: nothing it started (it should have none) outlives it
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            out.seek(0)
            err.seek(0)
            stdout = out.read(output_kb << 10).decode("utf-8", "replace")
            stderr = err.read(output_kb << 10).decode("utf-8", "replace")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if proc.returncode == _UNAVAILABLE and stderr.startswith("sandbox unavailable"):
        raise SandboxUnavailable(f"cannot run generated code safely here: {stderr.strip()}")
    return RunResult(stdout, stderr, proc.returncode, timed_out, time.monotonic() - start)
