"""ruff over the repository: the formatter's layout and the lint rules of pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_code_is_formatted() -> None:
    result = ruff("format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lint_rules_pass() -> None:
    result = ruff("check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lint_check_reports_a_finding(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import os\n")
    result = ruff("check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(broken))
    assert result.returncode == 1 and "F401" in result.stdout, result.stdout
