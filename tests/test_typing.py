"""mypy --strict over the package as it installs (the project checks its types strictly).

The folders kernel/, plugins/ and api/ install as ternmq.kernel, ternmq.plugins and
ternmq.api through package-dir; mypy does not follow setuptools' editable import hook,
so the test lays the package out with symlinks and checks that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_tree(tmp_path: Path) -> Path:
    package = tmp_path / "ternmq"
    package.mkdir()
    for module in (ROOT / "ternmq").glob("*.py"):
        (package / module.name).symlink_to(module)
    for folder in ("kernel", "plugins", "api"):
        (package / folder).symlink_to(ROOT / folder, target_is_directory=True)
    return tmp_path


def mypy(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tree / ".mypy_cache"),
            *args,
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"MYPYPATH": str(tree), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_package_passes_mypy_strict(tmp_path: Path) -> None:
    result = mypy(package_tree(tmp_path), "-p", "ternmq")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_the_check_reports_a_type_error(tmp_path: Path) -> None:
    tree = package_tree(tmp_path)
    broken = tree / "broken.py"
    broken.write_text("from ternmq.kernel.values.types import ClientInfo\n\nClientInfo(client_id=3)\n")
    result = mypy(tree, str(broken))
    assert result.returncode == 1 and "broken.py:3: error" in result.stdout, result.stdout
