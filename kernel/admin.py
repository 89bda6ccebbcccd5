"""The admin command tree, in the shape of ``vmq-admin``.

A command is a path of words (``session show``) bound to a function that receives the
service face (:class:`~ternmq.kernel.Service`) and the parsed arguments and returns a
:class:`Table` or a :class:`Text`. The same tree is rendered by ``ternmq-admin`` (over
the control socket), by the management API (``GET /api/v1/<path>?key=value&--flag``)
and by tests that call :meth:`AdminRegistry.run` directly. Every command comes through
the ``register_admin_commands`` hook: the broker's own ones from the essential ``admin``
built-in plugin (``ternmq.plugins.admin``), the others from any plugin; they are removed
again when the plugin unloads.

Argument syntax (clique's): positional ``key=value``; flags ``--flag`` or
``--flag=value``; ``--help`` anywhere prints the help of that level.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .hooks.registries import Owned
from .values.output import Table, Text

if TYPE_CHECKING:
    from .service import Service
    from .values.config import ConfigError


class CommandError(Exception):
    """A bad command line; ``usage`` is the help text to show with it."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


#: An admin command's function: it gets the service face and the parsed arguments and
#: returns its output, or an awaitable of it.
CommandHandler = Callable[["Service", "Arguments"], Awaitable[Table | Text] | Table | Text]


@attrs.frozen
class Command:
    path: tuple[str, ...]
    function: CommandHandler
    help: str
    keys: Mapping[str, str] = attrs.field(factory=dict)
    flags: Mapping[str, str] = attrs.field(factory=dict)
    required: tuple[str, ...] = ()
    any_flags: bool = False  # True: any --item is accepted (session show columns/filters)
    any_keys: bool = False  # True: any key=value is accepted (set: plugins add settings)
    owner: str = ""


@attrs.frozen
class Arguments:
    """Parsed arguments: ``keys`` from ``key=value``, ``flags`` from ``--flag[=value]``.

    ``flag`` returns a flag as given (``True`` when bare); ``text_flag``, ``int_flag``
    and ``bool_flag`` also check its value and raise a :class:`CommandError` that names
    the flag, says what it takes and carries the command's ``usage``.
    """

    keys: Mapping[str, str]
    flags: Mapping[str, str | bool]
    repeated: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    usage: str = attrs.field(default="", eq=False, repr=False)

    def flag(self, name: str, default: Any = None) -> Any:
        return self.flags.get(name, default)

    def text_flag(self, name: str, default: str | None = None) -> str | None:
        """``--name=value``; a bare ``--name`` is an error (it would read as ``True``)."""
        value = self.flags.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise CommandError(f"--{name} needs a value: --{name}=<value>", self.usage)
        return value

    def int_flag(self, name: str, default: int, *, minimum: int = 0) -> int:
        """``--name=N``, a whole number of at least ``minimum``."""
        value = self.flags.get(name)
        if value is None:
            return default
        # Digits only: int() would also take " 5", "1_0" and "+5", which nobody means.
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value) and int(value) >= minimum:
            return int(value)
        given = "nothing" if value is True else repr(value)
        raise CommandError(f"--{name} takes a whole number >= {minimum} (--{name}=N), not {given}", self.usage)

    def bool_flag(self, name: str) -> bool:
        """A switch: ``--name`` or ``--name=true`` is on, ``--name=false`` off."""
        value = self.flags.get(name, False)
        if isinstance(value, bool):
            return value
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise CommandError(f"--{name} is a switch (--{name}, or --{name}=true|false), not --{name}={value}", self.usage)

    def usage_error(self, message: str) -> CommandError:
        """An error about these arguments, with the command's usage."""
        return CommandError(message, self.usage)


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (``5``, ``true``, ``"x"``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ternmq-admin's own options, shown in the top-level help of the tree (which is what
# `ternmq-admin --help` prints, with or without a running broker).
ADMIN_OPTIONS_USAGE = "[--config FILE] [--socket PATH] [--format=human|json]"
ADMIN_OPTIONS = (
    ("--config FILE", "the broker's configuration: use its control socket (default: the embedded default's)"),
    ("--socket PATH", "use this control socket"),
    ("--format=human|json", "print the answer as text (default) or JSON; also after the command"),
    ("-h, --help", "this help; `ternmq-admin <command> --help` for one command"),
)
# Each one runs as written against a running broker (the json_auth one once that plugin
# is installed and its users file written); tests run them.
ADMIN_EXAMPLES = (
    "plugin show",
    "session show --client_id --is_online",
    "retain show --topic='sensors/#'",
    "plugin enable name=json_auth --config users_file=users.json   # a plugin installed with pip",
    "set max_inflight=64",
)


class AdminRegistry(Owned[tuple[str, ...], Command]):
    """The command tree (see module docstring); ``owned_by(plugin)`` is what a plugin's
    ``register_admin_commands`` receives, so that its commands go when it unloads."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: dict[tuple[str, ...], Command] = self.entries
        self.group_help: dict[tuple[str, ...], str] = {}

    def add(
        self,
        path: str | Sequence[str],
        function: CommandHandler,
        *,
        help: str,
        keys: Mapping[str, str] | None = None,
        flags: Mapping[str, str] | None = None,
        required: Sequence[str] = (),
        any_flags: bool = False,
        any_keys: bool = False,
        owner: str = "",
    ) -> None:
        """Add a command; ``keys``/``flags`` map each accepted name to its help."""
        words = tuple(path.split()) if isinstance(path, str) else tuple(path)
        if words in self.commands:
            raise ValueError(f"admin command {' '.join(words)!r} already exists")
        self.commands[words] = Command(
            words,
            function,
            help,
            dict(keys or {}),
            dict(flags or {}),
            tuple(required),
            any_flags,
            any_keys,
            owner or self._owner,
        )

    def describe(self, path: str | Sequence[str], help: str) -> None:
        """Help text of a command group (``plugin``, ``session``...)."""
        words = tuple(path.split()) if isinstance(path, str) else tuple(path)
        self.group_help[words] = help

    # -- help ----------------------------------------------------------------------------

    def help(self, words: Sequence[str] = ()) -> str:
        prefix = tuple(words)
        command = self.commands.get(prefix)
        if command is not None:
            lines = [
                f"Usage: ternmq-admin {' '.join(prefix)}"
                + "".join(f" {k}=<{k}>" for k in command.keys)
                + (" <key>=<value>..." if command.any_keys else "")
                + (" [flags]" if command.flags else " [--<name>...]" if command.any_flags else ""),
                "",
                command.help,
            ]
            if command.keys:
                lines += ["", "Arguments:"] + [f"  {k}=<value>  {h}" for k, h in command.keys.items()]
            if command.flags:
                lines += ["", "Flags:"] + [f"  --{f}  {h}" for f, h in command.flags.items()]
            return "\n".join(lines)
        children = sorted(
            {p[len(prefix)] for p in self.commands if p[: len(prefix)] == prefix and len(p) > len(prefix)}
        )
        if not children:
            raise CommandError(f"unknown command: {' '.join(prefix)}", self.help(prefix[:-1]))
        title = self.group_help.get(prefix, "Manage the running ternmq broker." if not prefix else "")
        usage = f"{' '.join(prefix)} <command>" if prefix else f"{ADMIN_OPTIONS_USAGE} <command> [args]"
        lines = [f"Usage: ternmq-admin {usage}", ""]
        if title:
            lines += [title, ""]
        lines.append("Commands:")
        for child in children:
            sub = prefix + (child,)
            text = self.commands[sub].help if sub in self.commands else self.group_help.get(sub, "")
            lines.append(f"  {child:<12} {text.splitlines()[0] if text else ''}")
        if not prefix:
            # The top level is what `ternmq-admin --help` prints: commands and options together.
            lines += ["", "Options:"] + [f"  {option:<21} {text}" for option, text in ADMIN_OPTIONS]
            lines += ["", "Examples:"] + [f"  ternmq-admin {example}" for example in ADMIN_EXAMPLES]
        lines += ["", "Use --help after any command for its arguments."]
        return "\n".join(lines)

    # -- running -------------------------------------------------------------------------

    def parse(self, argv: Sequence[str]) -> tuple[Command | None, Arguments, bool]:
        """Split argv into (command, arguments, wants_help)."""
        words: list[str] = []
        rest = list(argv)
        while rest and not rest[0].startswith("-") and "=" not in rest[0]:
            words.append(rest.pop(0))
        wants_help = "--help" in rest or "-h" in rest
        path = tuple(words)
        command = self.commands.get(path)
        if command is None:
            if wants_help or not rest and any(p[: len(path)] == path and len(p) > len(path) for p in self.commands):
                return None, Arguments({}, {}), True
            raise CommandError(f"unknown command: {' '.join(words) or '(none)'}", self._nearest_help(path))
        keys: dict[str, str] = {}
        flags: dict[str, str | bool] = {}
        repeated: dict[str, list[str]] = {}
        index = 0
        while index < len(rest):
            token = rest[index]
            index += 1
            if token in ("--help", "-h"):
                continue
            if token.startswith("--"):
                name, has_value, value = token[2:].partition("=")
                if has_value and name in command.keys and name not in command.flags:
                    keys[name] = value  # vmq-admin's form of an argument: plugin disable --name=x
                    continue
                if not command.any_flags and name not in command.flags:
                    raise CommandError(f"unknown flag --{name}", self.help(path))
                # "--config key=value" as two words; a next word without "=" is taken
                # too, so that _config_pairs names it as the bad pair it is.
                if name == "config" and not has_value and index < len(rest) and not rest[index].startswith("-"):
                    value, has_value = rest[index], "="
                    index += 1
                if name == "config":
                    repeated.setdefault(name, []).append(value)
                flags[name] = value if has_value else True
            elif "=" in token:
                name, _, value = token.partition("=")
                if name not in command.keys and not command.any_keys:
                    raise CommandError(f"unknown argument {name}=", self.help(path))
                keys[name] = value
            else:
                raise CommandError(f"unexpected word {token!r}", self.help(path))
        missing = [k for k in command.required if k not in keys]
        if missing and not wants_help:
            raise CommandError(f"missing argument {missing[0]}=", self.help(path))
        arguments = Arguments(keys, flags, {k: tuple(v) for k, v in repeated.items()}, self.help(path))
        return command, arguments, wants_help

    def _nearest_help(self, path: tuple[str, ...]) -> str:
        for length in range(len(path), -1, -1):
            try:
                return self.help(path[:length])
            except CommandError:
                continue
        return ""

    async def run(self, service: Service, argv: Sequence[str]) -> Table | Text:
        """Run one command line: its function gets ``service`` and the arguments;
        raises CommandError for bad input."""
        command, arguments, wants_help = self.parse(argv)
        if wants_help or command is None:
            words = [w for w in argv if not w.startswith("-") and "=" not in w]
            return Text(self.help(words))
        result = command.function(service, arguments)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, (Table, Text)):
            raise TypeError(f"admin command {' '.join(command.path)} returned {type(result).__name__}")
        return result


def option_error(exc: ConfigError, args: Arguments) -> CommandError:
    """A ConfigError about a command-line value, naming the option as it was typed."""
    if exc.key is None:
        return args.usage_error(str(exc))
    message = str(exc).removeprefix(f"{exc.source}: [{exc.table}] {exc.key}: ")
    option = f"--{exc.key}" if exc.key in args.flags else exc.key
    return args.usage_error(f"{option}: {message}")
