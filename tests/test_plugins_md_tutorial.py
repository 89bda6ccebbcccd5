"""docs/plugins.md, "Where the broker finds a plugin", done as the reader would do it.

The files of the section are written where it says (the plugin is the guide's
``reserved_topics.py``), ``ternmq --config`` runs as a real process (with ``--port 0``
added) from the folder the section starts in, and its ``ternmq-admin`` lines run from
another folder: the plugin is loaded, and a real client's publish to ``internal/`` is
refused. The ``PYTHONPATH`` alternative the section names is run the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ternmq.kernel.testing import MQTTTestClient

from helpers import plugin_samples

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugins.md"
SECTION = "### Where the broker finds a plugin"


helpers = plugin_samples()


def fenced_blocks(lines: list[str]) -> list[tuple[str, str, str | None]]:
    """(language, code, marker of the line before) of every fenced block in ``lines``."""
    blocks = []
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[index])
        if fence:
            start = index
            index += 1
            while not lines[index].startswith("```"):
                index += 1
            marker = re.match(r"^<!--\s*test(?::\s*(\S+))?\s*-->", lines[start - 1])
            blocks.append(
                (fence.group(1), "\n".join(lines[start + 1 : index]) + "\n", marker.group(1) if marker else None)
            )
        index += 1
    return blocks


def section(lines: list[str], title: str) -> list[str]:
    """The lines below the heading ``title``, up to the next heading outside code."""
    start = lines.index(title) + 1
    in_code = False
    for index in range(start, len(lines)):
        if lines[index].startswith("```"):
            in_code = not in_code
        elif not in_code and lines[index].startswith("#"):
            return lines[start:index]
    return lines[start:]


@pytest.fixture
def tutorial() -> dict[str, Any]:
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    plugins = [code for lang, code, marker in fenced_blocks(lines) if marker == "reserved_topics.py"]
    blocks = fenced_blocks(section(lines, SECTION))
    tomls = [code for lang, code, _ in blocks if lang == "toml"]
    commands = [line.strip() for lang, code, _ in blocks if lang == "sh" for line in code.splitlines() if line.strip()]
    assert len(plugins) == 1 and len(tomls) == 1, "the section shows one plugin file and one configuration"
    starts = [c for c in commands if c.startswith("ternmq --config ")]
    admins = [c for c in commands if c.startswith("ternmq-admin ")]
    assert len(starts) == 1 and admins and len(starts) + len(admins) == len(commands), commands
    config = Path(shlex.split(starts[0])[2])
    enable = next(c for c in admins if " plugin enable " in c)
    module = re.search(r"name=(\w+):Plugin", enable)
    assert module is not None, enable
    text = "\n".join(section(lines, SECTION))
    return {
        "plugin": plugins[0],
        "toml": tomls[0],
        "start": shlex.split(starts[0]),
        "admin": admins,
        "config": config,
        "module": module.group(1),
        "text": text,
    }


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Where the reader is (``work``), another folder for ternmq-admin (``elsewhere``),
    and a short XDG_RUNTIME_DIR for the default control socket."""
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with helpers.short_dir() as runtime:
        yield {"work": tmp_path / "work", "elsewhere": tmp_path / "elsewhere", "runtime": runtime}


def environment(runtime: Path, **extra: str) -> dict[str, str]:
    """The reader's environment: nothing of the test suite on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "XDG_RUNTIME_DIR": str(runtime), "PYTHONDONTWRITEBYTECODE": "1", **extra}


async def assert_internal_is_refused(port: int) -> None:
    async with MQTTTestClient.open(port) as client:
        assert (await client.connect("reader")).reason_code == 0
        assert (await client.publish("internal/x", b"1", qos=1)).reason_code == 0x87
        assert (await client.publish("public/x", b"1", qos=1)).reason_code < 0x80


def write_files(tutorial: dict[str, Any], work: Path, toml: str) -> Path:
    """The configuration, and the plugin in the first plugin_path folder if any."""
    config = work / tutorial["config"]
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(toml, encoding="utf-8")
    folders = tomllib.loads(tutorial["toml"])["broker"]["plugin_path"]
    plugins = config.parent / folders[0]
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / f"{tutorial['module']}.py").write_text(tutorial["plugin"], encoding="utf-8")
    return plugins


async def test_the_plugin_path_tutorial_works_as_written(tutorial: dict[str, Any], folders: dict[str, Path]) -> None:
    write_files(tutorial, folders["work"], tutorial["toml"])
    env = environment(folders["runtime"])
    with helpers.BrokerProcess([*tutorial["start"][1:], "--port", "0"], env=env, cwd=folders["work"]) as broker:
        broker.wait_ready()
        for line in tutorial["admin"]:
            result = subprocess.run(
                shlex.split(line),
                capture_output=True,
                text=True,
                env=env,
                timeout=20,
                cwd=folders["elsewhere"],
                stdin=subprocess.DEVNULL,
            )
            assert result.returncode == 0, f"{line}: {result.stderr}"
            if " plugin enable " in line:
                assert result.stdout == "Done\n"
            if " plugin show " in line:
                assert f"{tutorial['module']}:Plugin" in result.stdout and "auth_on_publish" in result.stdout
        await assert_internal_is_refused(broker.port)
    assert "Traceback" not in broker.text()


async def test_the_pythonpath_alternative_of_the_tutorial_works_too(
    tutorial: dict[str, Any], folders: dict[str, Path]
) -> None:
    match = re.search(r"`PYTHONPATH=(\S+) ternmq --config (\S+)`", tutorial["text"])
    assert match is not None, "the section names the PYTHONPATH alternative"
    without = "".join(line + "\n" for line in tutorial["toml"].splitlines() if not line.startswith("plugin_path"))
    plugins = write_files(tutorial, folders["work"], without)
    assert folders["work"] / match.group(1) == plugins and Path(match.group(2)) == tutorial["config"]
    env = environment(folders["runtime"], PYTHONPATH=match.group(1))  # relative: to the broker's working directory
    with helpers.BrokerProcess(["--config", match.group(2), "--port", "0"], env=env, cwd=folders["work"]) as broker:
        broker.wait_ready()
        enable = next(line for line in tutorial["admin"] if " plugin enable " in line)
        result = subprocess.run(
            shlex.split(enable),
            capture_output=True,
            text=True,
            env=environment(folders["runtime"]),
            timeout=20,
            cwd=folders["elsewhere"],
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        await assert_internal_is_refused(broker.port)


async def test_without_either_the_module_is_not_found_and_the_error_says_where_to_put_it(
    tutorial: dict[str, Any], folders: dict[str, Path]
) -> None:
    without = "".join(line + "\n" for line in tutorial["toml"].splitlines() if not line.startswith("plugin_path"))
    plugins = write_files(tutorial, folders["work"], without)
    env = environment(folders["runtime"])
    with helpers.BrokerProcess([*tutorial["start"][1:], "--port", "0"], env=env, cwd=folders["work"]) as broker:
        broker.wait_ready()
        enable = next(line for line in tutorial["admin"] if " plugin enable " in line)
        # Even from the folder the module is in: the broker imports, not ternmq-admin.
        result = subprocess.run(
            shlex.split(enable),
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
            cwd=plugins,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 1
        assert f"cannot import {tutorial['module']}: no module named '{tutorial['module']}'" in result.stderr
        assert "[broker] plugin_path" in result.stderr and "ternmq-admin runs in does not matter" in result.stderr
