"""Loading and unloading plugins: resolve, configure, register, serve; and the reverse.

A plugin is found by built-in short name (``ternmq.plugins.BUILTIN``), by entry point
in the group ``ternmq.plugins``, or by dotted path (``package.module`` or
``package.module:attribute``), imported by the broker from its own ``sys.path`` (with
``[broker] plugin_path`` in front). Its table in plugins.toml is split into the settings
the kernel applies to every plugin (``priority``, ``hook_timeout``, ``on_error``,
``breaker_threshold``, ``breaker_cooldown``) and the plugin's own keys, which build its
attrs ``Config`` (unknown keys are errors; relative ``Path`` keys are joined to the
configuration file's folder). Built-in plugins load exactly this way.

Loading is all or nothing: if building the Config, the constructor, or ``serve``
before it reports started fails, the load fails with a :class:`PluginError` and
nothing of the plugin stays registered.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import pluggy
import trio

from ternmq.plugins import ESSENTIAL

from .hooks.dispatch import SYNCHRONOUS_HOOKS, PluginPolicy
from .plugin_lookup import PluginError, describe, find_plugin, plugin_error
from .values.config import ConfigError, PluginEntry, build_attrs, plugin_table_name

if TYPE_CHECKING:
    from .hooks.dispatch import HookDispatcher
    from .hooks.registries import ApiRoutes, MetricsRegistry, OwnerTracked, SettingsRegistry
    from .values.config import BrokerSettings, Config

log = logging.getLogger("ternmq.plugins")

UNLOAD_GRACE = 5.0


@attrs.frozen
class KernelSettings:
    """Keys of every ``[plugins.NAME]`` table that the kernel itself applies."""

    priority: int | None = None
    hook_timeout: float | None = None
    on_error: str = attrs.field(default="deny")
    breaker_threshold: int = 0
    breaker_cooldown: float = 30.0

    @on_error.validator
    def _check_on_error(self, attribute: Any, value: str) -> None:
        if value not in ("deny", "next"):
            raise ValueError("must be 'deny' or 'next'")


@attrs.define
class LoadedPlugin:
    """A plugin as the manager holds it."""

    name: str
    plugin: Any
    source: str
    version: str
    config: Any
    settings: KernelSettings
    state: str = "loading"
    # What it was loaded from, so that ``reload`` can build it again (None: registered
    # as a ready object, which cannot be rebuilt).
    table: Mapping[str, Any] | None = None
    path: str | None = None
    scope: trio.CancelScope | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


class PluginHost(Protocol):
    """What the plugin host uses of the broker that runs it."""

    @property
    def config(self) -> Config: ...

    @property
    def settings(self) -> BrokerSettings: ...

    @property
    def plugin_manager(self) -> pluggy.PluginManager: ...

    @property
    def dispatcher(self) -> HookDispatcher: ...

    @property
    def admin(self) -> OwnerTracked:
        """The admin command tree (admin.py's AdminRegistry)."""
        ...

    @property
    def plugin_metrics(self) -> MetricsRegistry: ...

    @property
    def plugin_settings(self) -> SettingsRegistry: ...

    @property
    def api_routes(self) -> ApiRoutes: ...

    async def store_changed(self) -> None:
        """A plugin storing sessions was loaded or unloaded: sessions move to the store
        there is now (SessionLifecycle.store_changed)."""

    @property
    def service(self) -> object:
        """What a plugin's ``serve`` gets (service.py's Service); only handed on here."""
        ...


class PluginManager:
    """Loads, lists and unloads the broker's plugins (one per broker, no global state)."""

    def __init__(self, broker: PluginHost) -> None:
        self.broker = broker
        self.loaded: dict[str, LoadedPlugin] = {}
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        """Give the manager the nursery that plugin ``serve`` tasks run in, and put
        ``[broker] plugin_path`` in front of ``sys.path``."""
        self._nursery = nursery
        self._extend_import_path()

    def _extend_import_path(self) -> None:
        # sys.path is the process's: a second broker in the same process shares it,
        # so a folder already on it is not added twice.
        config = self.broker.config
        folders = self.broker.settings.plugin_path
        for folder in folders:
            if not folder.is_dir():
                raise ConfigError(config.source, "broker", "plugin_path", f"no such folder: {folder}")
        for folder in reversed(folders):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))

    async def load_configured(self, entries: Iterable[PluginEntry]) -> None:
        """Load the enabled plugins of the configuration, in order.

        A plugin that cannot be found, imported or set up is an error of the
        configuration file, reported like a bad key: file, ``[plugins.NAME]``, why.
        """
        source = self.broker.config.source
        for entry in entries:
            if entry.enabled:
                try:
                    await self.load(entry.name, entry.settings, source_name=source)
                except PluginError as exc:
                    raise ConfigError(source, plugin_table_name(entry.name), None, exc.reason) from None

    def instantiate(
        self, name: str, target: Any, settings: Mapping[str, Any], source_name: str
    ) -> tuple[Any, Any, KernelSettings]:
        """Build (plugin object, its Config, kernel settings) from a table."""
        table_name = plugin_table_name(name)
        kernel_keys = {field.name for field in attrs.fields(KernelSettings)}
        kernel_table = {k: v for k, v in settings.items() if k in kernel_keys}
        own_table = {k: v for k, v in settings.items() if k not in kernel_keys}
        kernel_settings = build_attrs(KernelSettings, kernel_table, source_name, table_name)
        factory = getattr(target, "Plugin", None) if isinstance(target, ModuleType) else target
        config_class = getattr(factory if factory is not None else target, "Config", None)
        if config_class is None and isinstance(target, ModuleType):
            config_class = getattr(target, "Config", None)
        if config_class is not None:
            try:
                config = build_attrs(
                    config_class, own_table, source_name, table_name, base=self.broker.config.base_directory
                )
            except ConfigError:
                raise
            except Exception as exc:  # a Config may check more than types, and raise what it likes
                raise plugin_error(name, f"its configuration was refused: {describe(exc)}") from exc
        elif own_table:
            raise ConfigError(
                source_name, table_name, sorted(own_table)[0], "unknown key (this plugin takes no settings)"
            )
        else:
            config = None
        if factory is None:
            return target, config, kernel_settings  # a module of hook functions
        if isinstance(factory, type):
            try:
                plugin = factory(config) if config is not None else factory()
            except Exception as exc:  # e.g. a file named in its table that cannot be read
                raise plugin_error(name, f"set-up failed: {describe(exc)}") from exc
            return plugin, config, kernel_settings
        # A ready-made object (module:object) was built without this table: keys for it
        # would be silently ignored, so they are refused.
        if own_table:
            raise ConfigError(
                source_name,
                table_name,
                sorted(own_table)[0],
                f"unknown key: {type(target).__name__} is a ready-made plugin object, used as it "
                "is; name its class (module:Class) to configure it",
            )
        return target, None, kernel_settings

    # -- loading -----------------------------------------------------------------------

    async def load(
        self, name: str, settings: Mapping[str, Any] | None = None, *, source_name: str = "api", path: str | None = None
    ) -> LoadedPlugin:
        """Load, configure, register and start one plugin.

        ``name`` is resolved as a built-in, entry point or dotted path, unless ``path``
        (a dotted path) says where the plugin is; then ``name`` only names it.
        """
        if name in self.loaded:
            raise plugin_error(name, "already loaded")
        target, source, version = find_plugin(path, is_path=True) if path else find_plugin(name)
        table = dict(settings or {})
        plugin, config, kernel_settings = self.instantiate(name, target, table, source_name)
        loaded = await self.register(
            name, plugin, config=config, settings=kernel_settings, source=source, version=version
        )
        loaded.table, loaded.path = table, path
        return loaded

    async def reload(
        self, name: str, table: Mapping[str, Any] | None = None, *, source_name: str | None = None
    ) -> LoadedPlugin:
        """Build the plugin again, from the table it was loaded with or from ``table``
        (named ``source_name`` in a ConfigError), and swap it in.

        The new instance is built first: when its configuration or constructor fails
        (a users file that no longer parses...), the running one stays and the error is
        raised. If the new one then fails to start, the old object is registered again.
        """
        old = self.loaded.get(name)
        if old is None:
            raise plugin_error(name, "not loaded")
        if old.table is None:
            raise plugin_error(name, "was registered as a ready object and cannot be reloaded")
        new_table = dict(old.table if table is None else table)
        target, source, version = find_plugin(old.path, is_path=True) if old.path else find_plugin(name)
        plugin, config, kernel_settings = self.instantiate(
            name, target, new_table, source_name or self.broker.config.source
        )
        await self.unload(name)
        try:
            loaded = await self.register(
                name, plugin, config=config, settings=kernel_settings, source=source, version=version
            )
        except (PluginError, ConfigError):  # ConfigError: its serve failed to start
            restored = await self.register(
                name, old.plugin, config=old.config, settings=old.settings, source=old.source, version=old.version
            )
            restored.table, restored.path = old.table, old.path
            raise
        loaded.table, loaded.path = new_table, old.path
        return loaded

    async def register(
        self,
        name: str,
        plugin: Any,
        *,
        config: Any = None,
        settings: KernelSettings | None = None,
        source: str = "object",
        version: str = "",
    ) -> LoadedPlugin:
        """Register an already built plugin object under ``name`` and start its ``serve``."""
        pm = self.broker.plugin_manager
        settings = settings or KernelSettings()
        self._check_hooks(name, plugin)
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise plugin_error(name, str(exc)) from None
        dispatcher = self.broker.dispatcher
        dispatcher.policies[name] = PluginPolicy(**attrs.asdict(settings))  # the same fields
        loaded = LoadedPlugin(name, plugin, source, version, config, settings)
        self.loaded[name] = loaded
        serve = getattr(plugin, "serve", None)
        if serve is not None and self._nursery is not None:
            try:
                await self._nursery.start(self._run_plugin, loaded, serve)
            except Exception as exc:
                pm.unregister(name=name)
                del self.loaded[name]
                dispatcher.rebuild()
                dispatcher.forget_plugin(name)
                raise plugin_error(name, f"failed to start: {describe(exc)}") from exc
        dispatcher.rebuild()
        self._call_registration_hooks(name, plugin)
        if self._stores_sessions(name):
            await self.broker.store_changed()
        if loaded.state == "loading":  # serve may already have failed right after started()
            loaded.state = "running"
        # The essential ones load with every broker: that is no news for the log.
        log.log(logging.DEBUG if name in ESSENTIAL else logging.INFO, "plugin %s loaded (%s)", name, source)
        if dispatcher.has("on_plugin_loaded"):
            await dispatcher.notify("on_plugin_loaded", name=name)
        return loaded

    def _call_registration_hooks(self, name: str, plugin: Any) -> None:
        """Collect what the plugin registers (admin commands, metrics, live settings,
        HTTP routes).

        Only this plugin's implementations are called, with a view of each registry
        that records the plugin as owner, so unloading removes exactly its entries.
        """
        broker = self.broker
        arguments: dict[str, dict[str, OwnerTracked]] = {
            "register_admin_commands": {"registry": broker.admin.owned_by(name)},
            "register_metrics": {"registry": broker.plugin_metrics.owned_by(name)},
            "register_config": {"settings": broker.plugin_settings.owned_by(name)},
            "register_api_routes": {"routes": broker.api_routes.owned_by(name)},
        }
        for caller in broker.plugin_manager.get_hookcallers(plugin) or []:
            if caller.name not in arguments:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    try:
                        impl.function(**{a: arguments[caller.name][a] for a in impl.argnames})
                    except Exception:
                        log.exception("plugin %s: %s failed", name, caller.name)

    def _stores_sessions(self, name: str) -> bool:
        dispatcher = self.broker.dispatcher
        return any(name in dispatcher.implementers(hook) for hook in ("session_store_save", "message_store_save"))

    def _remove_registrations(self, name: str) -> None:
        self.broker.admin.remove_owner(name)
        self.broker.plugin_metrics.remove_owner(name)
        self.broker.plugin_settings.remove_owner(name)
        self.broker.api_routes.remove_owner(name)

    def _check_hooks(self, name: str, plugin: Any) -> None:
        """A misspelt or unknown hook, or a wrapper of an async hook, fails the load."""
        marker = self.broker.plugin_manager.project_name + "_impl"
        for attribute in dir(plugin):
            try:
                function = getattr(plugin, attribute)
            except Exception:
                continue
            opts = getattr(function, marker, None)
            if not isinstance(opts, dict):
                continue
            hook_name = opts.get("specname") or attribute
            if not hasattr(self.broker.plugin_manager.hook, hook_name) and not opts.get("optionalhook"):
                raise plugin_error(name, f"{attribute} implements unknown hook {hook_name!r}")
            if hook_name in self.broker.dispatcher.registration_hooks and inspect.iscoroutinefunction(function):
                raise plugin_error(name, f"{hook_name} must be synchronous (it is called at load)")
            if hook_name in SYNCHRONOUS_HOOKS and inspect.iscoroutinefunction(function):
                raise plugin_error(name, f"{hook_name} must be synchronous (it is called on the delivery path)")
            if hook_name in self.broker.dispatcher.async_hooks and (opts.get("wrapper") or opts.get("hookwrapper")):
                raise plugin_error(name, f"{hook_name} cannot be a wrapper (it is called asynchronously)")

    async def _run_plugin(self, loaded: LoadedPlugin, serve: Any, *, task_status: trio.TaskStatus[None]) -> None:
        started = False

        class _Status:
            def started(self, value: Any = None) -> None:
                nonlocal started
                started = True
                task_status.started(value)

        try:
            with trio.CancelScope() as loaded.scope:
                await serve(self.broker.service, task_status=_Status())
        except Exception:
            if not started:
                raise
            log.exception("plugin %s: serve failed", loaded.name)
            loaded.state = "failed"
        finally:
            loaded.done.set()

    async def unload(self, name: str) -> None:
        """Unregister first (no new calls), then cancel what the plugin started (the
        service face refuses it for an essential plugin; ``reload`` uses it)."""
        loaded = self.loaded.pop(name, None)
        if loaded is None:
            raise plugin_error(name, "not loaded")
        stored_sessions = self._stores_sessions(name)
        self.broker.plugin_manager.unregister(name=name)
        self.broker.dispatcher.rebuild()
        self._remove_registrations(name)
        # Shielded: a caller inside the plugin's own scope (a command of the plugin that
        # unloads it) is cancelled by the line below, and must still finish the unload;
        # it then waits the grace for its own task, and is cancelled when it returns.
        with trio.CancelScope(shield=True):
            if loaded.scope is not None:
                loaded.scope.cancel()
                with trio.move_on_after(UNLOAD_GRACE):
                    await loaded.done.wait()
            loaded.state = "unloaded"
            self.broker.dispatcher.forget_plugin(name)
            if stored_sessions:
                await self.broker.store_changed()
            log.info("plugin %s unloaded", name)
            if self.broker.dispatcher.has("on_plugin_unloaded"):
                await self.broker.dispatcher.notify("on_plugin_unloaded", name=name)
