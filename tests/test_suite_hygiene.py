"""The suite cleans up after itself: it writes about 2.6 GB of teachers, caches, checkpoints and Dagster
homes, and kept to the end of the session that filled a CI disk. Checked on a small inner suite run with
this repository's pytest settings and ``tests/conftest.py``."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PASSING_MODULE = """
import pytest

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    path = tmp_path_factory.mktemp("module_dir") / "cache.bin"
    path.write_bytes(b"x" * 1000)
    return path

def test_first(shared, tmp_path):
    (tmp_path / "out.bin").write_bytes(b"y")
    assert shared.is_file()

def test_second_still_sees_the_module_dir(shared):
    assert shared.is_file()  # not removed between the module's tests
"""

FAILING_MODULE = """
import pytest

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    path = tmp_path_factory.mktemp("kept_module_dir") / "cache.bin"
    path.write_bytes(b"x")
    return path

def test_fails(shared, tmp_path):
    (tmp_path / "evidence.txt").write_text("read me")
    assert False
"""


def test_a_passing_modules_temp_dirs_go_and_a_failing_ones_stay(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_a_passes.py").write_text(PASSING_MODULE)
    (suite / "test_b_fails.py").write_text(FAILING_MODULE)
    base = tmp_path / "base"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(suite),
            f"--basetemp={base}",
            str(suite),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "1 failed, 2 passed" in proc.stdout, proc.stdout + proc.stderr
    left = sorted(p.name for p in base.iterdir())
    assert not [name for name in left if name.startswith(("module_dir", "test_first", "test_second"))], left
    assert [name for name in left if name.startswith("kept_module_dir")], left  # kept for reading
    assert list(base.glob("test_fails*/evidence.txt")), left
