"""The code sandbox (fedft.sandbox): tests run, hostile snippets fail cleanly, the host is untouched."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fedft.sandbox import Limits, run_python

ROOT = Path(__file__).resolve().parent.parent
FAST = Limits(timeout_s=10, cpu_s=10, memory_mb=256, output_kb=64)


def test_code_and_its_tests_run_beside_each_other():
    solution = {"solution.py": "def add(a, b):\n    return a + b\n"}
    good = run_python("from solution import add\nassert add(2, 3) == 5\nprint('passed')", FAST, solution)
    assert good.ok and good.stdout == "passed\n", good
    bad = run_python("from solution import add\nassert add(2, 3) == 6", FAST, solution)
    assert bad.status == "error" and "AssertionError" in bad.stderr
    assert {"process", "rlimits", "audit-hook"} <= set(good.isolation)


def test_an_infinite_loop_is_killed_at_the_wall_clock_limit():
    r = run_python("while True:\n    pass", Limits(timeout_s=1.0, cpu_s=30))
    assert r.status == "timeout" and r.returncode is None
    assert r.seconds < 10


def test_a_fork_bomb_creates_no_process():
    for code in ("import os\nwhile True:\n    os.fork()",
                 "import subprocess\nsubprocess.Popen(['sh', '-c', ':(){ :|:& };:'])",
                 "import os\nos.system('sleep 100 &')"):
        r = run_python(code, FAST)
        assert r.status == "error" and "not allowed" in r.stderr, (code, r.stderr)


def test_a_huge_allocation_fails_inside_the_child():
    r = run_python("x = bytearray(8 * 2**30)\nprint('allocated')", FAST)
    assert r.status == "error" and "MemoryError" in r.stderr and "allocated" not in r.stdout


def test_files_outside_the_scratch_directory_are_neither_deleted_nor_read(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for code in (f"import os\nos.remove({str(victim)!r})",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                 f"open({str(victim)!r}, 'w').write('gone')",
                 f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
                 f"print(open({str(ROOT / 'pyproject.toml')!r}).read())",
                 f"import os\nprint(os.listdir({str(ROOT)!r}))"):
        r = run_python(code, FAST)
        assert r.status == "error" and "sandbox:" in r.stderr, (code, r.stderr)
        assert "[project]" not in r.stdout and "fedft" not in r.stdout
    assert victim.read_text() == "precious"
    # fedft and the repository's environment are not importable; the scratch directory is writable
    assert "ModuleNotFoundError" in run_python("import fedft", FAST).stderr
    assert run_python("open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())", FAST).stdout == "ok\n"


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)"):
            r = run_python(code, FAST)
            assert r.status == "error", (code, r)
            with pytest.raises(TimeoutError):
                server.accept()  # nothing ever connected
    finally:
        server.close()


def test_output_is_capped_and_bad_limits_are_refused():
    r = run_python("import sys\nfor _ in range(10**6):\n    sys.stdout.write('x' * 1000)", FAST)
    assert r.status == "error" and len(r.stdout) <= 64 * 1024
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="leaves the scratch"):
        run_python("pass", FAST, {"../escape.py": "x = 1"})


def test_the_sandbox_leaves_no_scratch_behind():
    import tempfile

    before = {p.name for p in Path(tempfile.gettempdir()).glob("fedft-sandbox-*")}
    run_python("open('big.txt', 'w').write('y' * 1000)", FAST)
    assert {p.name for p in Path(tempfile.gettempdir()).glob("fedft-sandbox-*")} == before
    assert os.path.exists(ROOT / "pyproject.toml")
