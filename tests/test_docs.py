"""The plugin author's documentation, checked against the code it describes.

* docs/hooks.md has a ``### <hook>`` section for every hookspec, whose signature line
  equals the spec's (built from ``inspect.signature``) and whose family is the spec's.
* Every python block marked ``<!-- test -->`` or ``<!-- test: NAME -->`` in
  docs/hooks.md and docs/plugins.md is executed as a module (hooks.md's blocks in order,
  each seeing the names of the ones before it). The example of every hook is then
  registered in a running broker and driven with a real MQTT client to show that it
  does what the text says (the three registration hooks the kernel does not call yet
  are called directly). The named examples of plugins.md have drivers too; the block
  named ``test_*.py`` is run with pytest in a subprocess next to the ``*.py`` blocks,
  which also checks the ``ternmq_broker``/``ternmq_client`` fixtures of the pytest11
  entry point.
* Runnable blocks import only the public surface (``ternmq.kernel``'s ``__all__``),
  TOML blocks parse as configuration, and every ``ternmq-admin`` line parses against
  the real admin command tree.
* docs/configuration.md (and plugins.md's kernel key table) lists every key of
  ``Limits``, ``BrokerSettings``, ``ListenerConfig``, ``KernelSettings`` and the
  retainer's ``Config``, no key that does not exist, and the right defaults.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
import subprocess
import sys
import tomllib
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel

import ternmq.kernel
from ternmq.kernel import hookspecs
from ternmq.kernel.admin import AdminRegistry, CommandError
from ternmq.kernel.admin_cli import _split_options
from ternmq.kernel.codec import Auth, Connack, Disconnect
from ternmq.kernel.manager import KernelSettings
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, test_config
from ternmq.kernel.values.config import BrokerSettings, ConfigError, Limits, ListenerConfig, PluginEntry, parse_config
from ternmq.kernel.values.output import Table, Text
from ternmq.kernel.values.types import Message, SessionSnapshot, TopicSubscription
from ternmq.plugins import cluster, retainer, sqlite_store, webhooks
from ternmq.plugins.admin import register_commands

from helpers import eventually

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLES_PACKAGE = "ternmq_doc_examples"
# Docs whose runnable blocks build on each other (one namespace, in order).
SHARED_NAMESPACE = {"hooks.md"}
# Private modules a doc example may import from, and what: not re-exported by
# ternmq.kernel in this release (reported as a gap of the public surface).
PRIVATE_IMPORTS_ALLOWED = {"ternmq.kernel.admin": {"Table", "Text"}}
SPEC_ATTRIBUTE = hookspecs.PROJECT_NAME + "_spec"
IMPL_ATTRIBUTE = hookspecs.PROJECT_NAME + "_impl"
FAMILIES = {
    **{name: "decision" for name in hookspecs.DECISION_HOOKS},
    **{name: "notification" for name in hookspecs.NOTIFICATION_HOOKS},
    **{name: "provider" for name in hookspecs.PROVIDER_HOOKS},
    **{name: "registration" for name in hookspecs.REGISTRATION_HOOKS},
}
HOOKS = sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, SPEC_ATTRIBUTE))


# -- reading markdown -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # None: not runnable; "": <!-- test -->; else the NAME of <!-- test: NAME -->
    section: str | None  # the enclosing ### heading

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Document:
    name: str
    lines: list[str]
    blocks: list[Block] = field(default_factory=list)
    headings: list[tuple[int, int, str]] = field(default_factory=list)  # (index, level, text)

    def section(self, title: str) -> list[str]:
        """Lines below the heading ``title`` up to the next heading (outside code)."""
        for position, (index, _, text) in enumerate(self.headings):
            if text == title:
                end = self.headings[position + 1][0] if position + 1 < len(self.headings) else len(self.lines)
                return self.lines[index + 1 : end]
        raise KeyError(title)


MARKER = re.compile(r"^<!--\s*test(?::\s*(\S+))?\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@cache
def document(name: str) -> Document:
    lines = (DOCS / name).read_text(encoding="utf-8").splitlines()
    doc = Document(name, lines)
    section: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence:
            start = index
            index += 1
            while index < len(lines) and not lines[index].startswith("```"):
                index += 1
            marker_match = MARKER.match(lines[start - 1]) if start > 0 else None
            marker = None if marker_match is None else (marker_match.group(1) or "")
            doc.blocks.append(
                Block(name, start + 1, fence.group(1), "\n".join(lines[start + 1 : index]) + "\n", marker, section)
            )
        elif heading := HEADING.match(line):
            level, text = len(heading.group(1)), heading.group(2)
            doc.headings.append((index, level, text))
            section = text if level == 3 else None if level < 3 else section
        index += 1
    return doc


def runnable(doc: str, lang: str = "python") -> list[Block]:
    return [b for b in document(doc).blocks if b.marker is not None and b.lang == lang]


def table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of the first markdown table in ``lines`` (header and rule skipped)."""
    rows: list[list[str]] = []
    started = False
    for line in lines:
        if line.startswith("|"):
            started = True
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif started:
            break
    assert len(rows) >= 2 and set(rows[1][0]) <= set("-: "), f"no table in {lines[:3]}"
    return rows[2:]


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- running the examples ------------------------------------------------------------------


@dataclass
class Ran:
    block: Block
    module: types.ModuleType | None
    defined: dict[str, Any]
    error: BaseException | None


def _module_name(block: Block) -> str:
    return f"{EXAMPLES_PACKAGE}.{block.doc.replace('.', '_')}_{block.line}"


@cache
def executed(doc: str) -> dict[str, Ran]:
    """Execute the runnable python blocks of ``doc``; block id -> outcome."""
    if EXAMPLES_PACKAGE not in sys.modules:
        package = types.ModuleType(EXAMPLES_PACKAGE)
        package.__path__ = []
        sys.modules[EXAMPLES_PACKAGE] = package
    results: dict[str, Ran] = {}
    carried: dict[str, Any] = {}
    for block in runnable(doc):
        if block.marker.startswith("test_"):
            continue  # a pytest file: run by test_plugins_md_test_file_passes_under_pytest
        name = _module_name(block)
        module = types.ModuleType(name)
        if doc in SHARED_NAMESPACE:
            module.__dict__.update(carried)
        before = dict(module.__dict__)
        sys.modules[name] = module
        try:
            exec(compile(block.code, block.id, "exec"), module.__dict__)
        except Exception as exc:  # reported by test_runnable_python_block_executes
            results[block.id] = Ran(block, None, {}, exc)
            continue
        defined = {
            k: v
            for k, v in module.__dict__.items()
            if not k.startswith("__") and (k not in before or before[k] is not v)
        }
        results[block.id] = Ran(block, module, defined, None)
        if doc in SHARED_NAMESPACE:
            carried.update(defined)
    return results


def hook_example(hook: str) -> type:
    """The class the ``### hook`` example of hooks.md defines with an implementation of it."""
    blocks = [b for b in runnable("hooks.md") if b.section == hook]
    assert len(blocks) == 1, f"### {hook}: expected one runnable example, found {len(blocks)}"
    ran = executed("hooks.md")[blocks[0].id]
    assert ran.error is None, f"the {hook} example fails: {ran.error!r}"
    classes = [
        v
        for v in ran.defined.values()
        if isinstance(v, type) and isinstance(getattr(getattr(v, hook, None), IMPL_ATTRIBUTE, None), dict)
    ]
    assert len(classes) == 1, f"the {hook} example should define one class implementing it: {classes}"
    return classes[0]


def named_example(name: str) -> types.ModuleType:
    """The module of the plugins.md block marked ``<!-- test: name -->``."""
    blocks = [b for b in runnable("plugins.md") if b.marker == name]
    assert len(blocks) == 1, f"plugins.md: expected one block named {name}"
    ran = executed("plugins.md")[blocks[0].id]
    assert ran.error is None and ran.module is not None, f"plugins.md {name} fails: {ran.error!r}"
    return ran.module


# -- client helpers ---------------------------------------------------------------------------


async def connack(
    port: int,
    client_id: str,
    username: str | None = None,
    password: bytes | None = None,
    protocol_level: int = 5,
    **kwargs: Any,
) -> Any:
    async with MQTTTestClient.open(port, protocol_level) as client:
        return await client.connect(client_id, username=username, password=password, **kwargs)


class AllowConnect:
    """Lets every client connect, so that allow_anonymous=false tests reach later hooks."""

    @hookspecs.hookimpl
    def auth_on_register(self) -> Any:
        return ternmq.kernel.allow()


PERSISTENT = {"session_expiry_interval": 60}


# -- hooks.md: sections and signatures -------------------------------------------------------


def spec_signature(name: str) -> str:
    """``name(arg: annotation, ...) -> return``, as the hookspec declares it."""
    signature = inspect.signature(getattr(hookspecs, name))

    def text(annotation: Any) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    params = []
    for param in signature.parameters.values():
        item = param.name
        if param.annotation is not inspect.Parameter.empty:
            item += f": {text(param.annotation)}"
        if param.default is not inspect.Parameter.empty:
            item += f" = {param.default!r}"
        params.append(item)
    result = (
        "" if signature.return_annotation is inspect.Signature.empty else f" -> {text(signature.return_annotation)}"
    )
    return f"{name}({', '.join(params)}){result}"


def test_hook_list_is_read_from_the_hookspecs() -> None:
    assert len(HOOKS) >= 29 and "auth_on_register" in HOOKS and set(HOOKS) == set(FAMILIES)


@pytest.mark.parametrize("hook", HOOKS)
def test_hooks_md_has_a_section_for_every_hookspec(hook: str) -> None:
    titles = [text for _, level, text in document("hooks.md").headings if level == 3]
    assert titles.count(hook) == 1, f"docs/hooks.md needs exactly one '### {hook}' section"


@pytest.mark.parametrize("hook", HOOKS)
def test_hooks_md_signature_equals_the_spec(hook: str) -> None:
    blocks = [b for b in document("hooks.md").blocks if b.section == hook]
    assert blocks, f"### {hook} has no code block"
    assert blocks[0].code.strip() == spec_signature(hook)


@pytest.mark.parametrize("hook", HOOKS)
def test_hooks_md_states_the_family_of_every_hook(hook: str) -> None:
    text = "\n".join(document("hooks.md").section(hook))
    assert f"**Family:** {FAMILIES[hook]}." in text


@pytest.mark.parametrize("hook", HOOKS)
def test_hooks_md_documents_every_argument(hook: str) -> None:
    text = "\n".join(document("hooks.md").section(hook))
    for name in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f"| `{name}` |" in text, f"### {hook}: argument {name} has no row"


def test_hooks_md_has_no_section_for_a_hook_that_does_not_exist() -> None:
    titles = [text for _, level, text in document("hooks.md").headings if level == 3]
    hook_like = [t for t in titles if re.fullmatch(r"[a-z_0-9]+", t)]
    assert sorted(set(hook_like) - set(HOOKS)) == []


# -- runnable blocks ------------------------------------------------------------------------


RUNNABLE_PYTHON = [b for doc in ("hooks.md", "plugins.md") for b in runnable(doc)]


def test_both_guides_have_runnable_examples() -> None:
    assert len(runnable("hooks.md")) >= len(HOOKS)
    assert len(runnable("plugins.md")) >= 6


@pytest.mark.parametrize("block", [b for b in RUNNABLE_PYTHON if not b.marker.startswith("test_")], ids=lambda b: b.id)
def test_runnable_python_block_executes(block: Block) -> None:
    ran = executed(block.doc)[block.id]
    assert ran.error is None, f"{block.id}: {ran.error!r}"


@pytest.mark.parametrize("block", RUNNABLE_PYTHON, ids=lambda b: b.id)
def test_runnable_blocks_import_only_the_public_surface(block: Block) -> None:
    public = set(ternmq.kernel.__all__)
    for node in ast.walk(ast.parse(block.code)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith("ternmq."), f"{block.id}: import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ternmq"):
            names = {alias.name for alias in node.names}
            if node.module == "ternmq.kernel":
                assert names <= public, f"{block.id}: {sorted(names - public)} not in ternmq.kernel.__all__"
            else:
                allowed = PRIVATE_IMPORTS_ALLOWED.get(node.module or "", set())
                assert names <= allowed, f"{block.id}: from {node.module} import {sorted(names)}"


def test_every_hook_example_is_driven_or_called() -> None:
    assert set(DRIVERS) == set(HOOKS)


PLUGINS_MD_NAMES = sorted({b.marker for b in runnable("plugins.md") if b.marker})


def test_every_named_plugins_md_example_has_a_driver() -> None:
    driven = {name for name in PLUGINS_MD_NAMES if not name.endswith(".py")}
    assert driven == set(PLUGINS_MD_DRIVERS)


@pytest.mark.parametrize(
    "block", [b for doc in ("hooks.md", "plugins.md") for b in runnable(doc, "toml")], ids=lambda b: b.id
)
def test_runnable_toml_blocks_are_valid_configuration(block: Block) -> None:
    data = tomllib.loads(block.code)
    config = parse_config(data, block.id)
    kernel_keys = {f.name for f in attrs.fields(KernelSettings)}
    for entry in config.plugins:
        KernelSettings(**{k: v for k, v in entry.settings.items() if k in kernel_keys})


def _admin_lines(doc: str) -> list[str]:
    return [
        line.strip()
        for b in document(doc).blocks
        if b.lang in ("sh", "console", "bash")
        for line in b.code.splitlines()
        if line.strip().startswith("ternmq-admin ")
    ]


def test_every_ternmq_admin_line_of_plugins_md_parses() -> None:
    registry = AdminRegistry()
    register_commands(registry.owned_by("admin"))
    named_example("admin").Plugin().register_admin_commands(registry.owned_by("admin-example"))
    lines = _admin_lines("plugins.md")
    assert len(lines) >= 6
    for line in lines:
        options, argv = _split_options(shlex.split(line)[1:])
        assert options == {}, line
        try:
            command, _, wants_help = registry.parse(argv)
        except CommandError as exc:
            raise AssertionError(f"{line}: {exc}") from None
        assert command is not None and not wants_help, line


# -- drivers of the hooks.md examples -----------------------------------------------------


async def drive_auth_on_register(example: type) -> None:
    async with open_broker(test_config(allow_anonymous=False)) as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("c1", username="alice", password=b"secret")).reason_code == 0
            assert broker.sessions["c1"].max_queued == 100  # the modifier took effect
        refused = await connack(broker.port(), "c2", "alice", b"wrong")
        assert refused.reason_code == 0x86 and refused.properties["reason_string"] == "bad username or password"
        assert (await connack(broker.port(), "c3", "bob", b"x")).reason_code == 0x86  # nobody answered
        assert (await connack(broker.port(), "c4", "alice", b"wrong", protocol_level=4)).reason_code == 0x86
    async with open_broker(test_config(allow_anonymous=True)) as broker, registered(broker, example()):
        assert (await connack(broker.port(), "c5", "bob", b"x")).reason_code == 0
        # allow_anonymous stands in for a missing answer only: the plugin's deny still refuses.
        assert (await connack(broker.port(), "c6", "alice", b"wrong")).reason_code == 0x86


async def drive_auth_on_publish(example: type) -> None:
    async with open_broker(test_config(allow_anonymous=True)) as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as sub, MQTTTestClient.open(broker.port()) as d1:
            await sub.connect("sub")
            await sub.subscribe("devices/#", "other/#", qos=1)
            await d1.connect("d1")
            assert (await d1.publish("devices/d1/t", b"own", qos=1)).reason_code == 0
            assert (await sub.receive()).topic == "devices/d1/t"
            refused = await d1.publish("devices/d2/t", b"not own", qos=1)
            assert refused.reason_code == 0x87 and refused.properties["reason_string"] == "not your device"
            assert (await d1.publish("other/x", b"left to the default", qos=1)).reason_code == 0
            assert (await sub.receive()).topic == "other/x"
            assert await sub.nothing_received(0.1)
        async with MQTTTestClient.open(broker.port(), 4) as v311:
            await v311.connect("d3")
            await v311.publish("devices/d2/t", b"x", qos=0)
            assert await v311.closed() is None  # MQTT 3.1.1: disconnected
    async with (
        open_broker(test_config(allow_anonymous=False, no_match="deny")) as broker,
        registered(broker, AllowConnect()),
        registered(broker, example()),
    ):
        async with MQTTTestClient.open(broker.port()) as d1:
            await d1.connect("d1")
            assert (await d1.publish("devices/d1/t", b"own", qos=1)).reason_code == 0x10  # no subscriber
            assert (await d1.publish("other/x", b"nobody answers", qos=1)).reason_code == 0x87


async def drive_auth_on_subscribe(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            assert (await client.subscribe("#", "a/b", qos=2)).reason_codes == [0x87, 1]
            await client.publish("a/b", b"x", qos=2)
            assert (await client.receive()).qos == 1
        async with MQTTTestClient.open(broker.port(), 4) as v311:
            await v311.connect("v")
            assert (await v311.subscribe("#", "a/b", qos=2)).reason_codes == [0x80, 1]


async def drive_auth_on_unsubscribe(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.subscribe("alerts/#", "news/#", qos=0)
            assert (await client.unsubscribe("alerts/#")).reason_codes == [0x87]
            assert (await client.unsubscribe("news/#")).reason_codes == [0]
            await client.publish("alerts/fire", b"!")
            assert (await client.receive()).topic == "alerts/fire"  # still subscribed
            await client.publish("news/x", b"n")
            assert await client.nothing_received(0.1)


async def drive_on_auth(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            step = await client.connect(
                "c", properties={"authentication_method": "demo", "authentication_data": b"hello"}
            )
            assert isinstance(step, Auth) and step.reason_code == 0x18
            assert step.properties["authentication_data"] == b"prove it"
            await client.auth(0x18, {"authentication_method": "demo", "authentication_data": b"proof"})
            done = await client.next_packet()
            assert isinstance(done, Connack) and done.reason_code == 0
            assert done.properties["authentication_data"] == b"welcome"
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c2", properties={"authentication_method": "demo", "authentication_data": b"hello"})
            await client.auth(0x18, {"authentication_method": "demo", "authentication_data": b"guess"})
            assert (await client.next_packet()).reason_code == 0x87
        other = await connack(broker.port(), "c3", properties={"authentication_method": "kerberos"})
        assert other.reason_code == 0x8C  # nobody answers this method


async def drive_on_deliver(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with (
            MQTTTestClient.open(broker.port()) as admin,
            MQTTTestClient.open(broker.port()) as anon,
            MQTTTestClient.open(broker.port()) as publisher,
        ):
            await admin.connect("admin", username="admin")
            await anon.connect("anon")
            await publisher.connect("pub")
            await admin.subscribe("secret/#", "public/#", qos=1)
            await anon.subscribe("secret/#", "public/#", qos=1)
            await publisher.publish("secret/plan", b"s", qos=1)
            await publisher.publish("public/news", b"p", qos=1)
            assert [(await admin.receive()).topic for _ in range(2)] == ["secret/plan", "public/news"]
            assert (await anon.receive()).topic == "public/news"
            assert await anon.nothing_received(0.1)


async def drive_on_register(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        assigned = await connack(broker.port(), "")
        await connack(broker.port(), "named")
        assert plugin.assigned == [assigned.properties["assigned_client_identifier"]]


async def drive_on_publish(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.publish("a/b", b"1", qos=1)
            await client.publish("a/b", b"2", qos=1)
            assert plugin.counts["a/b"] == 2  # on_publish ran before the PUBACK


async def drive_on_subscribe(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.subscribe("a/+", "bad/#/x", qos=1)
            await eventually(lambda: plugin.log)
            assert plugin.log == [("c", "a/+", 1), ("c", "bad/#/x", 0x8F)]


async def drive_on_unsubscribe(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.subscribe("a", "b")
            await client.unsubscribe("a", "b")
            await eventually(lambda: plugin.log)
            assert plugin.log == [("c", ("a", "b"))]


async def drive_on_client_wakeup(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await eventually(lambda: "c" in plugin.clients)


async def drive_on_client_offline(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("persistent", clean_start=False, properties=PERSISTENT)
            await client.disconnect()
            await client.closed()
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("clean")
            await client.disconnect()
            await client.closed()
        await eventually(lambda: broker.sessions.get("clean") is None)
        await eventually(lambda: plugin.log)
        assert plugin.log == [("persistent", "normal")]


async def drive_on_client_gone(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            assert broker.service.disconnect("c")
            assert (await client.closed()).reason_code == 0x98
        await eventually(lambda: plugin.log)
        assert plugin.log == [("c", "kicked")]


async def _offline_subscriber(broker: Any, client_id: str, topic: str, expiry: int = 60) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect(client_id, clean_start=False, properties={"session_expiry_interval": expiry})
        await client.subscribe(topic, qos=1)
        await client.disconnect()
        await client.closed()
    await eventually(lambda: broker.sessions[client_id].connection is None)


async def drive_on_offline_message(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        await _offline_subscriber(broker, "s", "t")
        async with MQTTTestClient.open(broker.port()) as publisher:
            await publisher.connect("p")
            await publisher.publish("t", b"queued", qos=1)
            await publisher.publish("t", b"qos 0 is not queued", qos=0)
            await publisher.publish("t", b"queued too", qos=1)
        assert plugin.queued == [("s", "t"), ("s", "t")]


async def drive_on_session_expired(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        await _offline_subscriber(broker, "s", "t", expiry=1)
        assert plugin.expired == []
        await eventually(lambda: plugin.expired, timeout=4)
        assert plugin.expired == ["s"] and "s" not in broker.sessions


async def drive_on_message_drop(example: type) -> None:
    plugin = example()
    async with open_broker(test_config(max_queued_messages=1)) as broker, registered(broker, plugin):
        await _offline_subscriber(broker, "s", "t")
        async with MQTTTestClient.open(broker.port()) as publisher:
            await publisher.connect("p")
            await publisher.publish("t", b"kept", qos=1)
            await publisher.publish("t", b"dropped", qos=1)
        assert dict(plugin.reasons) == {"queue_full": 1}


class _Nothing:
    """A plugin without hooks, to load and unload."""


async def drive_on_plugin_loaded(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin, name="load-log"):
        async with registered(broker, _Nothing(), name="later"):
            assert plugin.loaded == ["load-log", "later"]  # itself, then plugins loaded after it


async def drive_on_plugin_unloaded(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin, name="unload-log"):
        async with registered(broker, _Nothing(), name="passing"):
            assert plugin.unloaded == []
        assert plugin.unloaded == ["passing"]


async def drive_retain_store(example: type) -> None:
    plugin = example()
    async with open_broker(test_config(plugins={})) as broker:
        assert (await connack(broker.port(), "before")).properties.get("retain_available") == 0
        async with registered(broker, plugin):
            async with MQTTTestClient.open(broker.port()) as client:
                assert "retain_available" not in (await client.connect("c")).properties
                await client.publish("r/1", b"kept", qos=1, retain=True)
            assert plugin.messages["r/1"].payload == b"kept"


async def drive_retain_lookup(example: type) -> None:
    async with open_broker(test_config(plugins={})) as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.publish("r/1", b"one", qos=1, retain=True)
            await client.publish("r/2/deep", b"two", qos=1, retain=True)
            await client.publish("s/1", b"other", qos=1, retain=True)
            await client.subscribe("r/#", qos=1)
            got = sorted([(await client.receive()) for _ in range(2)], key=lambda p: p.topic)
            assert [(p.topic, p.payload, p.retain) for p in got] == [("r/1", b"one", True), ("r/2/deep", b"two", True)]
            await client.subscribe("+/1", qos=1)
            assert sorted([(await client.receive()).topic for _ in range(2)]) == ["r/1", "s/1"]
            assert await client.nothing_received(0.1)


async def drive_retain_delete(example: type) -> None:
    plugin = example()
    async with open_broker(test_config(plugins={})) as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.publish("r/1", b"one", qos=1, retain=True)
            await client.publish("r/2", b"two", qos=1, retain=True)
            await client.publish("r/1", b"", qos=1, retain=True)  # clears r/1
            assert set(plugin.messages) == {"r/2"}
            deleted = await broker.admin.run(broker.service, ["retain", "delete", "--topic=r/2"])
            assert deleted == Text("Deleted 1 retained message on r/2")
            assert plugin.messages == {}
            await client.subscribe("r/#")
            assert await client.nothing_received(0.1)


def _sessions(example: type) -> dict[str, SessionSnapshot]:
    return sys.modules[example.__module__].SESSIONS


async def drive_session_store_load_all(example: type) -> None:
    sessions = _sessions(example)
    sessions.clear()
    sessions["kept"] = SessionSnapshot(
        "kept", None, 5, 60, (TopicSubscription("t", 1),), (Message("t", b"from the store", 1),)
    )
    try:
        config = test_config(plugins={"retainer": {}, f"{example.__module__}:{example.__name__}": {}})
        async with open_broker(config) as broker:
            async with MQTTTestClient.open(broker.port()) as client:
                ack = await client.connect("kept", clean_start=False, properties=PERSISTENT)
                assert ack.session_present
                assert (await client.receive()).payload == b"from the store"
                await client.publish("t", b"live", qos=1)
                assert (await client.receive()).payload == b"live"  # the subscription came back
    finally:
        sessions.clear()


async def drive_session_store_save(example: type) -> None:
    sessions = _sessions(example)
    sessions.clear()
    try:
        async with open_broker() as broker, registered(broker, example()):
            async with MQTTTestClient.open(broker.port()) as client:
                await client.connect("p", clean_start=False, properties=PERSISTENT)
                await client.subscribe("t", qos=1)
                await eventually(lambda: "p" in sessions)
                assert [s.topic_filter for s in sessions["p"].subscriptions] == ["t"]
            async with MQTTTestClient.open(broker.port()) as client:
                await client.connect("clean")
                await client.subscribe("t")
            assert set(sessions) == {"p"}  # only persistent sessions are kept
    finally:
        sessions.clear()


async def drive_session_store_delete(example: type) -> None:
    sessions = _sessions(example)
    sessions.clear()
    try:
        async with open_broker() as broker, registered(broker, example()):
            await _offline_subscriber(broker, "p", "t")
            assert "p" in sessions
            await connack(broker.port(), "p", clean_start=True)
            await eventually(lambda: "p" not in sessions)
    finally:
        sessions.clear()


async def drive_session_store_take(example: type) -> None:
    sessions = _sessions(example)
    sessions.clear()
    sessions["away"] = SessionSnapshot("away", None, 5, 60, (TopicSubscription("t", 1),))
    try:
        async with open_broker() as broker, registered(broker, example()):
            taken = await broker.service.take_stored_session("away")
            assert taken is not None and taken.subscriptions == (TopicSubscription("t", 1),)
            assert await broker.service.take_stored_session("nobody") is None
            assert await broker.service.take_stored_session("away", clean_start=True) is None
            assert "away" not in sessions  # taken, then forgotten
    finally:
        sessions.clear()


class _SessionSaver:
    """Gives the broker a session store, so that the per-message hooks fire."""

    @ternmq.kernel.hookimpl
    def session_store_save(self, session: SessionSnapshot) -> None:
        pass


def _pending(example: type) -> list[Any]:
    pending: list[Any] = sys.modules[example.__module__].PENDING
    return pending


async def drive_message_store_save(example: type) -> None:
    pending = _pending(example)
    pending.clear()
    async with open_broker() as broker, registered(broker, _SessionSaver()), registered(broker, example()):
        await _offline_subscriber(broker, "p", "t")
        await broker.service.publish("t", b"kept", qos=1)
        [(kind, client_id, entry_id, entry)] = pending
        assert (kind, client_id, entry.state, entry.message.payload) == ("save", "p", "queued", b"kept")
        assert entry_id == entry.entry_id
    pending.clear()


async def drive_message_store_delete(example: type) -> None:
    pending = _pending(example)
    pending.clear()
    async with open_broker() as broker, registered(broker, _SessionSaver()), registered(broker, example()):
        await _offline_subscriber(broker, "p", "t")
        await broker.service.publish("t", b"kept", qos=1)
        async with MQTTTestClient.open(broker.port()) as client:  # acknowledges what it gets
            await client.connect("p", clean_start=False, properties=PERSISTENT)
            assert (await client.receive()).payload == b"kept"
            await eventually(lambda: pending and pending[-1][0] == "delete")
        entry_id = pending[0][2]
        assert [(kind, saved) for kind, _, saved, _ in pending] == [("save", entry_id)] * 2 + [("delete", entry_id)]
    pending.clear()


async def drive_store_commit(example: type) -> None:
    pending = _pending(example)
    pending.clear()
    seen: list[int] = []

    class Counting(example):  # type: ignore[valid-type, misc]
        @ternmq.kernel.hookimpl
        async def store_commit(self) -> None:
            seen.append(len(pending))
            await super().store_commit()

    async with open_broker() as broker, registered(broker, _SessionSaver()), registered(broker, Counting()):
        await _offline_subscriber(broker, "p", "t")
        async with MQTTTestClient.open(broker.port()) as publisher:
            await publisher.connect("pub")
            assert (await publisher.publish("t", b"kept", qos=1)).reason_code == 0
        assert seen == [1] and pending == []  # the save was committed before the PUBACK


async def drive_record_load(example: type) -> None:
    records = sys.modules[example.__module__].RECORDS
    records.clear()
    records["mine", "a"] = b"1"
    records["other", "b"] = b"2"
    async with open_broker() as broker, registered(broker, example()):
        assert await broker.service.load_records("mine") == {"a": b"1"}
    records.clear()


async def drive_record_save(example: type) -> None:
    records = sys.modules[example.__module__].RECORDS
    records.clear()
    async with open_broker() as broker, registered(broker, example()):
        assert broker.service.records_available
        broker.service.save_record("mine", "a", b"1")
        broker.service.save_record("mine", "a", b"2")
        assert await broker.service.load_records("mine") == {"a": b"2"}
    records.clear()


async def drive_record_delete(example: type) -> None:
    records = sys.modules[example.__module__].RECORDS
    records.clear()
    async with open_broker() as broker, registered(broker, example()):
        broker.service.save_record("mine", "a", b"1")
        broker.service.delete_record("mine", "a")
        assert await broker.service.load_records("mine") == {}
    records.clear()


async def drive_cluster_forward(example: type) -> None:
    plugin = example()
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.publish("x/y", b"out", qos=1)
        await broker.service.publish("from/service", b"svc")
        message, origin = plugin.receive.receive_nowait()
        assert (message.topic, message.payload, origin) == ("x/y", b"out", "c")
        message, origin = plugin.receive.receive_nowait()
        assert (message.topic, origin) == ("from/service", f"$broker/{broker.node_name}")
        assert plugin.dropped == 0


async def drive_cluster_register(example: type) -> None:
    claimed = sys.modules[example.__module__].CLAIMED
    claimed.clear()
    async with open_broker() as broker, registered(broker, example()):
        assert (await connack(broker.port(), "here")).reason_code == 0
        assert claimed == {"here": broker.node_name}
    claimed.clear()


async def drive_cluster_claim(example: type) -> None:
    claimed = sys.modules[example.__module__].CLAIMED
    claimed.clear()
    async with open_broker() as broker, registered(broker, example()):
        assert (await connack(broker.port(), "clean", clean_start=True)).reason_code == 0
        assert claimed == {"clean": broker.node_name}
        claimed.clear()  # without clean start: cluster_register claims it (the base class)
        assert (await connack(broker.port(), "kept", clean_start=False)).reason_code == 0
        assert claimed == {"kept": broker.node_name}
    claimed.clear()


async def drive_cluster_shared_here(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as member:
            await member.connect("member")
            await member.subscribe("$share/g/t", qos=1)
            for n in range(4):
                await broker.service.publish("t", b"%d" % n, qos=1)
            got = [(await member.receive()).payload for _ in range(2)]
            assert got == [b"0", b"2"]  # the others were another node's to serve
            assert await member.nothing_received(0.1)


async def drive_cluster_sessions(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("near")
            table = await broker.admin.run(broker.service, ["session", "show", "--client_id", "--node"])
            assert isinstance(table, Table)
            assert [(r["client_id"], r["node"]) for r in table.rows] == [
                ("near", broker.node_name),
                ("far-away", "b@x"),
            ]


async def drive_cluster_disconnect(example: type) -> None:
    asked = sys.modules[example.__module__].ASKED
    asked.clear()
    async with open_broker() as broker, registered(broker, example()):
        done = await broker.admin.run(broker.service, ["session", "disconnect", "client-id=far-away", "--cleanup"])
        assert done == Text("Done")
        with pytest.raises(CommandError, match="no session"):
            await broker.admin.run(broker.service, ["session", "disconnect", "client-id=nowhere"])
        assert asked == [("far-away", True), ("nowhere", False)]
    asked.clear()


async def drive_cluster_leave(example: type) -> None:
    class Down:
        @ternmq.kernel.hookimpl
        def cluster_nodes(self) -> list[ternmq.kernel.NodeInfo]:
            return [ternmq.kernel.NodeInfo("gone@x", False)]

    plugin = example()
    async with open_broker() as broker, registered(broker, Down()), registered(broker, plugin):
        done = await broker.admin.run(broker.service, ["cluster", "leave", "node=gone@x"])
        assert done == Text(f"Done: gone@x removed; 0 of its sessions are {broker.node_name}'s now")
        assert plugin.removed == ["gone@x"]
        with pytest.raises(CommandError, match="is this node"):
            await broker.admin.run(broker.service, ["cluster", "leave", f"node={broker.node_name}"])
    async with open_broker() as broker:
        with pytest.raises(CommandError, match="runs as a single node"):
            await broker.admin.run(broker.service, ["cluster", "leave", "node=gone@x"])


async def drive_cluster_nodes(example: type) -> None:
    async with open_broker() as broker:
        alone = await broker.admin.run(broker.service, ["cluster", "show"])
        assert isinstance(alone, Table) and alone.rows == ({"Node": broker.node_name, "Running": True},)
        async with registered(broker, example()):
            shown = await broker.admin.run(broker.service, ["cluster", "show"])
            assert isinstance(shown, Table)
            assert [(row["Node"], row["Running"]) for row in shown.rows] == [
                ("ternmq@10.0.0.1", True),
                ("ternmq@10.0.0.2", False),
            ]


async def drive_cluster_plugins(example: type) -> None:
    async with open_broker() as broker:
        async with registered(broker, example(), name="far"):
            shown = await broker.admin.run(broker.service, ["plugin", "show"])
            assert isinstance(shown, Table) and shown.columns[0] == "Node"
            assert [(row["Node"], row["Plugin"]) for row in shown.rows] == [
                (broker.node_name, "retainer"),
                (broker.node_name, "far"),
                ("b@x", "acl"),
            ]
        alone = await broker.admin.run(broker.service, ["plugin", "show"])
        assert isinstance(alone, Table) and [row["Node"] for row in alone.rows] == [broker.node_name]


async def drive_cluster_metrics(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.publish("t", b"x", qos=1)

        async def lines(*flags: str) -> list[str]:
            shown = await broker.admin.run(broker.service, ["metrics", "show", *flags])
            return [line for line in shown.render().splitlines() if "publish_received" in line]

        assert await lines() == ["counter.publish_received = 41"]  # summed over the nodes
        assert await lines("--node=b@x") == ["counter.publish_received = 40"]
        assert await lines("--per-node") == [
            f'counter.publish_received{{node="{broker.node_name}"}} = 1',
            'counter.publish_received{node="b@x"} = 40',
        ]


async def drive_register_admin_commands(example: type) -> None:
    async with open_broker() as broker:
        async with registered(broker, example(), name="greeter"):
            assert await broker.admin.run(broker.service, ["greeter", "hello", "--name=docs"]) == Text("hello, docs")
            assert await broker.admin.run(broker.service, ["greeter", "hello"]) == Text("hello, world")
        with pytest.raises(CommandError):
            await broker.admin.run(broker.service, ["greeter", "hello"])  # removed with the plugin


async def drive_register_api_routes(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        route = broker.service.api_route("GET", "/greeting")
        assert route is not None and route.scope == "status"
        assert await route.handler() == {"greeting": "hello"}


async def drive_register_metrics(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("counted")
        shown = (await broker.admin.run(broker.service, ["metrics", "show"])).render()
        assert "counter.example_logins = 1" in shown


async def drive_register_config(example: type) -> None:
    async with open_broker() as broker, registered(broker, example()):
        assert (await broker.admin.run(broker.service, ["set", 'example.greeting="hi"'])).text == "Done"
        shown = await broker.admin.run(broker.service, ["show", "--example.greeting"])
        assert shown.rows[0]["example.greeting"] == "hi"
        with pytest.raises(CommandError):
            await broker.admin.run(broker.service, ["set", "example.greeting=5"])


DRIVERS: dict[str, Callable[[type], Any]] = {
    name.removeprefix("drive_"): value for name, value in list(globals().items()) if name.startswith("drive_")
}


@pytest.mark.parametrize("hook", HOOKS)
async def test_hooks_md_example_does_what_the_section_says(hook: str) -> None:
    example = hook_example(hook)
    await DRIVERS[hook](example)


async def test_hooks_md_on_deliver_example_also_filters_messages_queued_while_offline() -> None:
    # docs/hooks.md: on_deliver fires for messages queued while the subscriber was
    # offline, when its session comes back.
    async with open_broker() as broker, registered(broker, hook_example("on_deliver")()):
        await _offline_subscriber(broker, "anon", "secret/#")
        async with MQTTTestClient.open(broker.port()) as publisher:
            await publisher.connect("p")
            await publisher.publish("secret/plan", b"hidden", qos=1)
            await publisher.publish("secret/also", b"hidden too", qos=1)
        async with MQTTTestClient.open(broker.port()) as client:
            ack = await client.connect("anon", clean_start=False, properties=PERSISTENT)
            assert ack.session_present
            assert await client.nothing_received(0.2)
        assert len(broker.sessions["anon"].queue) == 0  # dropped, not kept for later


# -- drivers of the plugins.md examples ------------------------------------------------------


async def plugins_md_token_auth(module: types.ModuleType) -> None:
    async with open_broker(test_config(allow_anonymous=False)) as broker, registered(broker, module.Plugin()):
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("c", username="token", password=b"t-123")).reason_code == 0
            assert broker.sessions["c"].username == "alice"  # the username modifier
        assert (await connack(broker.port(), "c2", "token", b"t-999")).reason_code == 0x86
        assert (await connack(broker.port(), "c3", "someone", b"x")).reason_code == 0x86  # not its business


async def plugins_md_modifiers(module: types.ModuleType) -> None:
    async with open_broker() as broker, registered(broker, module.Plugin()):
        async with MQTTTestClient.open(broker.port()) as sub, MQTTTestClient.open(broker.port()) as pub:
            await sub.connect("sub")
            await sub.subscribe("clients/#", qos=2)
            await pub.connect("c")
            await pub.publish("t", b"x", qos=2)
            received = await sub.receive()
            assert (received.topic, received.qos) == ("clients/c/t", 1)


async def plugins_md_configured(module: types.ModuleType) -> None:
    toml_block = runnable("plugins.md", "toml")[0]
    table = tomllib.loads(toml_block.code)["plugins"]["myplugins.reserved_topics"]
    async with open_broker() as broker:
        loaded = await broker.plugins.load("reserved", table, path=module.__name__)
        assert loaded.config == module.Config(prefixes=("internal/", "billing/"), reason_code=0x87)
        assert loaded.settings.priority == 10
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            assert (await client.publish("billing/x", b"1", qos=1)).reason_code == 0x87
            assert (await client.publish("public/x", b"1", qos=1)).reason_code < 0x80
        rows = (await broker.admin.run(broker.service, ["plugin", "show", "--plugin=reserved"])).rows
        assert rows[0]["priority"] == 10 and "auth_on_publish" in rows[0]["Hook(s)"]
        with pytest.raises(ConfigError, match="unknown key"):
            await broker.plugins.load("bad", {"prefix": "x/"}, path=module.__name__)
        with pytest.raises(ConfigError, match="reason_code: must be an MQTT failure reason code"):
            await broker.plugins.load("bad", {"reason_code": 0x10}, path=module.__name__)
        with pytest.raises(ConfigError, match="on_error"):
            await broker.plugins.load("bad", {"on_error": "ignore"}, path=module.__name__)


async def plugins_md_webhook(module: types.ModuleType) -> None:
    plugin = module.Plugin(module.Config(workers=2))
    async with open_broker() as broker, registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            for n in range(3):
                await client.publish(f"t/{n}", b"x", qos=1)
            await eventually(lambda: len(plugin.posted) == 3)
            assert sorted(e["topic"] for e in plugin.posted) == ["t/0", "t/1", "t/2"]
            assert plugin.posted[0] == {"client_id": "c", "topic": plugin.posted[0]["topic"], "payload": "x"}

    class DeadReceiver(module.Plugin):
        async def post(self, event: dict) -> None:
            await trio.sleep_forever()  # a web server that never answers

    stuck = DeadReceiver(module.Config(queue_size=1, workers=1))
    async with open_broker() as broker, registered(broker, stuck):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            with trio.fail_after(2):  # the publisher is never held up
                for n in range(6):
                    assert (await client.publish(f"t/{n}", b"x", qos=1)).reason_code < 0x80
            assert stuck.dropped >= 4  # one in the worker, one in the channel at most
    # and it loads from a plugins.toml table like any plugin
    async with open_broker() as broker:
        loaded = await broker.plugins.load("webhook", {"queue_size": 10, "workers": 1}, path=module.__name__)
        assert loaded.state == "running"
        await broker.plugins.unload("webhook")


async def plugins_md_heartbeat(module: types.ModuleType) -> None:
    async with open_broker() as broker:
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c")
            await client.subscribe("heartbeat/#")
            await broker.plugins.load("heartbeat", {"interval": 0.05}, path=module.__name__)
            first, second = await client.receive(), await client.receive()
            assert first.topic == second.topic == f"heartbeat/{broker.node_name}" and first.payload == b"alive"
            await broker.plugins.unload("heartbeat")
            await client.nothing_received(0.06)  # one may have been on its way
            assert await client.nothing_received(0.15)


async def plugins_md_admin(module: types.ModuleType) -> None:
    async with open_broker() as broker, registered(broker, module.Plugin(), name="blocklist"):
        assert await broker.admin.run(broker.service, ["blocklist", "add", "client-id=sensor-7"]) == Text("Done")
        table = await broker.admin.run(broker.service, ["blocklist", "show"])
        assert isinstance(table, Table) and [dict(r) for r in table.rows] == [{"client_id": "sensor-7"}]
        assert (await connack(broker.port(), "sensor-7")).reason_code == 0x8A
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("sensor-8")
            await broker.admin.run(broker.service, ["blocklist", "add", "client-id=sensor-8", "--kick"])
            assert isinstance(disconnect := await client.closed(), Disconnect) and disconnect.reason_code == 0x98
        with pytest.raises(CommandError, match="unknown flag"):
            await broker.admin.run(broker.service, ["blocklist", "add", "client-id=x", "--force"])


PLUGINS_MD_DRIVERS: dict[str, Callable[[types.ModuleType], Any]] = {
    name.removeprefix("plugins_md_"): value
    for name, value in list(globals().items())
    if name.startswith("plugins_md_") and callable(value)
}


@pytest.mark.parametrize("name", sorted(PLUGINS_MD_DRIVERS))
async def test_plugins_md_example_does_what_the_guide_says(name: str) -> None:
    await PLUGINS_MD_DRIVERS[name](named_example(name))


def test_plugins_md_test_file_passes_under_pytest(tmp_path: Path) -> None:
    files = [b for b in runnable("plugins.md") if b.marker.endswith(".py")]
    tests = [b for b in files if b.marker.startswith("test_")]
    assert tests, "plugins.md shows no complete test file"
    for block in files:
        (tmp_path / block.marker).write_text(block.code, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\nfilterwarnings = error\n", encoding="utf-8")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:benchmark",
            *[b.marker for b in tests],
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout


async def test_plugins_md_a_misspelt_hook_fails_the_load() -> None:
    from ternmq.kernel.manager import PluginError

    class Typo:
        @hookspecs.hookimpl
        def auth_on_publsh(self) -> None:
            pass

    async with open_broker() as broker:
        with pytest.raises(PluginError, match="unknown hook 'auth_on_publsh'"):
            async with registered(broker, Typo()):
                pass


async def test_plugins_md_the_plugin_loaded_first_is_asked_first_unless_priorities_say_otherwise() -> None:
    asked: list[str] = []

    class Asks:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @hookspecs.hookimpl
        def auth_on_register(self) -> None:
            asked.append(self.tag)

    async with open_broker() as broker:
        async with registered(broker, Asks("first"), name="first"), registered(broker, Asks("second"), name="second"):
            await connack(broker.port(), "c")
            assert asked == ["first", "second"]
            asked.clear()
        async with (
            registered(broker, Asks("first"), name="first"),
            registered(broker, Asks("second"), name="second", priority=1),
        ):
            await connack(broker.port(), "c")
            assert asked == ["second", "first"]


# -- docs/configuration.md and the kernel key tables --------------------------------------


NONE_WORDS = {"none", "broker's"}


def documented_keys(doc: str, heading: str) -> dict[str, str]:
    """key -> default cell of the first table under ``heading``."""
    keys: dict[str, str] = {}
    for row in table_rows(document(doc).section(heading)):
        for key in backticked(row[0]):
            keys[key] = row[1]
    return keys


def check_keys(
    doc: str, heading: str, cls: type, extra: dict[str, Any] | None = None, nested: set[str] = frozenset()
) -> None:
    documented = documented_keys(doc, heading)
    fields = {f.name: f for f in attrs.fields(cls) if f.name not in nested}
    expected = {name: f.default for name, f in fields.items()} | (extra or {})
    missing = sorted(set(expected) - set(documented))
    unknown = sorted(set(documented) - set(expected))
    assert not missing, f"{doc} {heading}: keys of {cls.__name__} not documented: {missing}"
    assert not unknown, f"{doc} {heading}: documented keys that {cls.__name__} does not have: {unknown}"
    for key, default in expected.items():
        if isinstance(default, attrs.Factory) or default is attrs.NOTHING:
            continue
        cell = documented[key]
        values = backticked(cell)
        if default is None:
            assert cell.lower() in NONE_WORDS, f"{doc} {heading} {key}: default is None, doc says {cell!r}"
            continue
        assert values, f"{doc} {heading} {key}: no default value in {cell!r}"
        documented_default = tomllib.loads(f"v = {values[0]}")["v"]
        assert documented_default == default and type(documented_default) is type(default), (
            f"{doc} {heading} {key}: default {default!r}, doc says {values[0]}"
        )


def test_configuration_md_documents_every_broker_key() -> None:
    check_keys("configuration.md", "`[broker]`", BrokerSettings, nested={"limits"})


def test_configuration_md_documents_every_limit() -> None:
    check_keys("configuration.md", "`[broker.limits]`", Limits)


def test_configuration_md_documents_every_listener_key() -> None:
    check_keys("configuration.md", "`[[listeners]]`", ListenerConfig)


def test_configuration_md_documents_every_kernel_key_of_plugin_tables() -> None:
    check_keys(
        "configuration.md",
        "`[plugins.NAME]`",
        KernelSettings,
        extra={"enabled": attrs.fields(PluginEntry).enabled.default},
    )


def test_configuration_md_documents_every_retainer_key() -> None:
    check_keys("configuration.md", "`[plugins.retainer]` (built-in)", retainer.Config)


def test_configuration_md_documents_every_cluster_key() -> None:
    check_keys("configuration.md", "`[cluster]`", cluster.Config)


def test_configuration_md_documents_every_redis_store_key() -> None:
    from ternmq.plugins.cluster import store

    check_keys("configuration.md", "`[plugins.redis_store]` (built-in)", store.Config)


def test_configuration_md_documents_every_sqlite_store_key() -> None:
    check_keys("configuration.md", "`[plugins.sqlite_store]` (built-in)", sqlite_store.Config)


def test_configuration_md_documents_every_sys_key() -> None:
    from ternmq.plugins import sys as sys_plugin

    check_keys("configuration.md", "`[plugins.sys]` (built-in)", sys_plugin.Config)


def test_api_md_documents_every_api_key() -> None:
    from ternmq import api

    check_keys("api.md", "Configuration", api.Config)


def test_webhooks_md_documents_every_webhooks_key() -> None:
    check_keys("webhooks.md", "Wiring endpoints", webhooks.Config)


def test_plugins_md_documents_every_kernel_key() -> None:
    check_keys(
        "plugins.md", "Kernel keys", KernelSettings, extra={"enabled": attrs.fields(PluginEntry).enabled.default}
    )


def test_the_key_check_catches_a_missing_key() -> None:
    @attrs.frozen
    class Larger:
        node_name: str = "ternmq@127.0.0.1"
        not_in_the_doc: int = 1

    with pytest.raises(AssertionError, match="not_in_the_doc"):
        check_keys("configuration.md", "`[broker]`", Larger)


def test_plugins_md_service_face_table_names_every_operation() -> None:
    from ternmq.kernel import Service

    rows = table_rows(document("plugins.md").section("The service face"))
    documented = set()
    for row in rows:
        for code in backticked(row[0]):
            match = re.match(r"(?:await )?service\.(\w+)", code)
            if match:
                documented.add(match.group(1))
    public = {name for name in dir(Service) if not name.startswith("_")}
    assert documented == public


async def test_plugins_md_service_face_session_fields_are_the_documented_ones() -> None:
    from ternmq.kernel import SessionInfo

    rows = table_rows(document("plugins.md").section("The service face"))
    sessions_row = next(row for row in rows if "service.sessions()" in row[0])
    fields = [field.name for field in attrs.fields(SessionInfo)]
    assert backticked(sessions_row[1])[1:] == fields  # after `SessionInfo`
    async with open_broker() as broker:
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("c", clean_start=False, properties=PERSISTENT)
            assert [info.client_id for info in broker.service.sessions()] == ["c"]


async def test_plugins_md_serve_failures_before_and_after_started() -> None:
    from ternmq.kernel.manager import PluginError

    class FailsEarly:
        async def serve(self, broker: Any, *, task_status: Any) -> None:
            raise RuntimeError("no database")

    calls: list[str] = []

    class FailsLater:
        async def serve(self, broker: Any, *, task_status: Any) -> None:
            task_status.started()
            await trio.lowlevel.checkpoint()
            raise RuntimeError("lost the database")

        @hookspecs.hookimpl
        def on_publish(self, message: Message) -> None:
            calls.append(message.topic)

    async with open_broker() as broker:
        with pytest.raises(PluginError, match="failed to start: no database"):
            await broker.plugins.register("early", FailsEarly())
        assert "early" not in broker.plugins.loaded
        async with registered(broker, FailsLater(), name="later") as loaded:
            await eventually(lambda: loaded.state == "failed")
            await broker.service.publish("still/called")
            assert calls == ["still/called"]  # its hooks stay registered


async def test_plugins_md_a_failed_decision_refuses_with_0x80_unless_on_error_is_next() -> None:
    class Broken:
        @hookspecs.hookimpl
        def auth_on_register(self) -> None:
            raise RuntimeError("bug")

    class Refuses:
        @hookspecs.hookimpl(trylast=True)
        def auth_on_register(self) -> Any:
            return ternmq.kernel.deny(0x86)

    async with open_broker() as broker, registered(broker, Refuses(), name="refuses"):
        async with registered(broker, Broken(), name="broken"):
            assert (await connack(broker.port(), "c")).reason_code == 0x80
        async with registered(broker, Broken(), name="broken", on_error="next"):
            assert (await connack(broker.port(), "c")).reason_code == 0x86  # the next plugin answered
        rows = (await broker.admin.run(broker.service, ["plugin", "show", "--plugin=broken"])).rows
        assert rows == ()  # unloaded: its counters went with it


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", ["hooks.md", "plugins.md"])
def test_links_between_the_guides_point_at_existing_files_and_headings(doc: str) -> None:
    fenced = {b.line + i for b in document(doc).blocks for i in range(b.code.count("\n") + 1)}
    text = "\n".join(line for number, line in enumerate(document(doc).lines, 1) if number not in fenced)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        path, _, anchor = link.partition("#")
        target = (DOCS / path).resolve() if path else DOCS / doc
        assert target.exists(), f"{doc}: link to missing {link}"
        if anchor:
            slugs = {_slug(t) for _, _, t in document(target.name).headings}
            assert anchor in slugs, f"{doc}: no heading for #{anchor} in {target.name}"
