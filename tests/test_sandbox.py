"""The PAL sandbox (rlhfkit.apps.sandbox.run_python): what a program may do (compute, print, write in its own
folder) and what it may not — reach the network (a real listener on this machine's loopback, TCP and UDP,
hears nothing), write outside its folder, start processes (a fork bomb), run forever, eat memory — each
refused by the kernel or killed, and the parent unharmed."""

from __future__ import annotations

import os
import socket
import time

import pytest

from rlhfkit.apps.sandbox import RunResult, run_python

pytestmark = pytest.mark.usefixtures("sandbox")


def test_a_program_computes_prints_and_writes_in_its_own_folder():
    r = run_python("import math\nopen('notes.txt', 'w').write('x' * 3)\nprint(math.comb(10, 3), open('notes.txt').read())")
    assert r.ok and r.stdout == "120 xxx\n"


def test_its_folder_is_fresh_and_removed_afterwards():
    r = run_python("import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))")
    folder, listing = r.stdout.splitlines()
    assert listing == "['program.py']"  # nothing left by another run
    assert not os.path.exists(folder)


def test_tcp_and_udp_to_a_listener_on_this_machine_fail(tmp_path):
    tcp, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tcp, udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        tcp.settimeout(0.5)
        udp.settimeout(0.5)
        code = (f"import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"try:\n    u.sendto(b'leak', ('127.0.0.1', {udp.getsockname()[1]}))\n    print('udp sent')\n"
                f"except OSError as e:\n    print('udp refused', e.errno)\n"
                f"socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=2)\nprint('tcp connected')")
        r = run_python(code)
        assert "udp refused" in r.stdout and "tcp connected" not in r.stdout and not r.ok
        with pytest.raises(TimeoutError):
            tcp.accept()
        with pytest.raises(TimeoutError):
            udp.recv(10)


def test_writes_outside_its_folder_are_refused(tmp_path):
    open_dir = tmp_path / "world-writable"
    open_dir.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(open_dir, 0o777)  # file permissions alone would allow it: only the sandbox stands in the way
    targets = [open_dir / "escape.txt", "/tmp/rlhfkit-sandbox-escape.txt", "/dev/shm/rlhfkit-sandbox-escape.txt"]
    for target in targets:
        r = run_python(f"open({str(target)!r}, 'w').write('x')")
        assert not r.ok and "PermissionError" in r.stderr, (target, r)
        assert not os.path.exists(target)
    r = run_python(f"import os\nos.rename('program.py', {str(open_dir / 'moved.py')!r})")  # a rename out of it too
    assert not r.ok and not (open_dir / "moved.py").exists()


def test_a_fork_bomb_and_a_subprocess_are_refused():
    start = time.monotonic()
    r = run_python("import os\nwhile True:\n    os.fork()", timeout_s=10)
    assert not r.timed_out and "BlockingIOError" in r.stderr  # the very first fork fails
    assert time.monotonic() - start < 10
    r = run_python("import subprocess\nprint(subprocess.run(['echo', 'hi'], capture_output=True).stdout)")
    assert not r.ok and "hi" not in r.stdout


def test_an_infinite_loop_and_a_sleeper_are_killed():
    for code in ("while True:\n    pass", "import time\ntime.sleep(60)"):
        start = time.monotonic()
        r = run_python(code, timeout_s=1.5)
        assert not r.ok and r.returncode < 0, r  # killed by a signal
        assert time.monotonic() - start < 10


def test_a_memory_hog_is_refused():
    r = run_python("x = bytearray(2 ** 31)\nprint('allocated')", memory_mb=200)
    assert not r.ok and "MemoryError" in r.stderr and "allocated" not in r.stdout
    r = run_python("x = bytearray(50 * 2 ** 20)\nprint('allocated')", memory_mb=200)
    assert r.ok  # the limit, not a broken interpreter: 50 MB fits


def test_output_is_capped():
    r = run_python("print('a' * 10_000_000)", output_kb=64)
    assert not r.ok and len(r.stdout) <= 64 * 1024


def test_reason_names_the_failure():
    assert RunResult("", "Traceback…\nZeroDivisionError: division by zero\n", 1, False, 0.1).reason() == \
        "ZeroDivisionError: division by zero"
    assert RunResult("", "", -9, True, 5).reason() == "killed: wall-clock time limit"
    assert RunResult("4\n", "", 0, False, 0.1).reason() == ""
