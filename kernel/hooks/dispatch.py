"""The one place that calls decision, notification and provider hooks.

pluggy stays synchronous: it gives us markers, spec validation, opt-in arguments,
ordering and registration. Calling goes through here so that ``async def``
implementations are awaited in the caller's trio task, the first answer of a decision
hook really stops the chain (nothing is left un-awaited), every call has a deadline,
``Exception`` from a plugin is contained and counted, and ``trio.Cancelled`` always
propagates. A per-hook snapshot of implementations is rebuilt on every register and
unregister, so a hook nobody implements costs one dict lookup.

The kernel's own mistakes are not the plugins': a call whose keyword arguments are not
exactly the hookspec's parameters raises ``TypeError`` to the kernel caller (checked
only when an implementation is about to be called), and is never counted against a
plugin. ``tests/kernel/test_hook_calls.py`` checks every call site statically as well.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Callable
from time import perf_counter
from typing import Any, NoReturn

import attrs
import pluggy
import trio

from ..codec.errors import ReasonCode
from ..values.types import Allow, Answer, AuthContinue, Deny

log = logging.getLogger("ternmq.dispatch")

# The answer a failed decision hook produces: the request is refused, with a code that
# is legal in CONNACK, PUBACK, PUBREC, SUBACK and UNSUBACK alike.
PLUGIN_FAILURE = Deny(ReasonCode.UNSPECIFIED_ERROR, "plugin error")

#: The attribute hookspecs.py's family decorators set on a hookspec function: the name
#: of its family. The dispatcher learns each hook's family from it, through pluggy.
FAMILY_ATTRIBUTE = "ternmq_family"
#: The families the dispatcher calls (registration hooks are plain pluggy calls).
CALLED_FAMILIES = frozenset({"decision", "notification", "provider"})


#: Provider hooks called on the delivery path without an ``await`` (``provide_now``):
#: an implementation must be a plain function (checked when a plugin loads).
SYNCHRONOUS_HOOKS = (
    "message_store_save",
    "message_store_delete",
    "record_save",
    "record_delete",
    "cluster_shared_here",
    "cluster_claim",
    "cluster_forward",
)


def hooks_of(plugin_manager: pluggy.PluginManager, families: frozenset[str]) -> frozenset[str]:
    """The hooks of ``plugin_manager``'s specifications whose family is in ``families``."""
    return frozenset(
        name
        for name, caller in vars(plugin_manager.hook).items()
        if isinstance(caller, pluggy.HookCaller)
        and caller.spec is not None
        and getattr(caller.spec.function, FAMILY_ATTRIBUTE, None) in families
    )


@attrs.define
class HookStats:
    """Counters of one plugin's implementation of one hook."""

    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    seconds: float = 0.0  # spent in the calls, with what they awaited
    consecutive_failures: int = 0
    last_error: str = ""


@attrs.define
class PluginPolicy:
    """How the dispatcher treats one plugin's failures (from its table in plugins.toml).

    ``on_error`` decides what a failed decision hook means: ``"deny"`` refuses the
    request, ``"next"`` asks the next plugin as if this one had no opinion. After
    ``breaker_threshold`` consecutive failures the plugin is skipped (answered with its
    ``on_error`` policy) for ``breaker_cooldown`` seconds, then tried again.
    """

    hook_timeout: float | None = None
    on_error: str = "deny"
    priority: int | None = None
    breaker_threshold: int = 0
    breaker_cooldown: float = 30.0
    open_until: float = 0.0


@attrs.frozen
class _Impl:
    plugin_name: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    stats: HookStats
    policy: PluginPolicy
    # kwargs -> the implementation's positional arguments (opt-in: only those it declares).
    arguments: Callable[[dict[str, Any]], tuple[Any, ...]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "arguments", _argument_getter(self.argnames))


def _argument_getter(argnames: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function picking ``argnames`` out of a call's kwargs, as a tuple.

    ``itemgetter`` does it in C for two names or more (most hooks); it returns a bare
    value for a single name, hence the small functions for zero and one.
    """
    if len(argnames) >= 2:
        return operator.itemgetter(*argnames)
    if argnames:
        name = argnames[0]
        return lambda kwargs: (kwargs[name],)
    return lambda kwargs: ()


class HookDispatcher:
    """Calls the async hook families over a pluggy ``PluginManager``.

    :param plugin_manager: the registry whose hook implementations are called.
    :param hook_timeout: deadline in seconds for one decision or provider call.
    :param notification_timeout: deadline in seconds for one notification call.
    """

    def __init__(
        self,
        plugin_manager: pluggy.PluginManager,
        *,
        hook_timeout: float = 5.0,
        notification_timeout: float = 2.0,
    ) -> None:
        self._plugin_manager = plugin_manager
        self.hook_timeout = hook_timeout
        self.notification_timeout = notification_timeout
        #: The hooks this dispatcher calls: those of the specifications added to
        #: ``plugin_manager`` before it was made, by family.
        self.async_hooks = hooks_of(plugin_manager, CALLED_FAMILIES)
        #: The registration hooks (synchronous, called by the plugin host at load).
        self.registration_hooks = hooks_of(plugin_manager, frozenset({"registration"}))
        self._impls: dict[str, tuple[_Impl, ...]] = {name: () for name in self.async_hooks}
        # The hooks with at least one implementation: ``name in implemented`` is has()
        # without a call, and a set of hooks is checked at once (connect.py).
        self.implemented: frozenset[str] = frozenset()
        # Hook name -> the hookspec's argument names (for hooks with implementations).
        self._parameters: dict[str, frozenset[str]] = {}
        self.stats: dict[tuple[str, str], HookStats] = {}
        self.policies: dict[str, PluginPolicy] = {}

    # -- snapshots ----------------------------------------------------------------------

    def rebuild(self) -> None:
        """Take a new snapshot of implementations; call after every (un)register."""
        impls: dict[str, tuple[_Impl, ...]] = {}
        parameters: dict[str, frozenset[str]] = {}
        registered = self._registration_order()
        for name in self.async_hooks:
            caller = getattr(self._plugin_manager.hook, name, None)
            if caller is None or caller.spec is None:
                impls[name] = ()
                continue
            parameters[name] = frozenset(caller.spec.argnames)
            keyed = []
            for hookimpl in caller.get_hookimpls():
                plugin_name = hookimpl.plugin_name
                stats = self.stats.setdefault((plugin_name, name), HookStats())
                policy = self.policies.setdefault(plugin_name, PluginPolicy())
                # tryfirst/trylast move one implementation within its priority class.
                marker = 0 if hookimpl.tryfirst else 2 if hookimpl.trylast else 1
                keyed.append(
                    (
                        (policy.priority is None, policy.priority or 0, marker, registered[plugin_name]),
                        _Impl(plugin_name, hookimpl.function, tuple(hookimpl.argnames), stats, policy),
                    )
                )
            keyed.sort(key=lambda pair: pair[0])
            impls[name] = tuple(impl for _, impl in keyed)
        self._impls = impls
        self._parameters = parameters
        self.implemented = frozenset(name for name, found in impls.items() if found)

    def _registration_order(self) -> dict[str, int]:
        # pluggy keeps its plugins in registration order: the configuration's tables in
        # order, then plugins enabled at run time in the order they were enabled.
        return {name: index for index, (name, _) in enumerate(self._plugin_manager.list_name_plugin())}

    def calling_order(self) -> list[str]:
        """Every registered plugin in the order hooks ask them: by ``priority`` (lower
        first; plugins with one before those without), then first registered first."""
        registered = self._registration_order()

        def key(name: str) -> tuple[bool, int, int]:
            priority = self.policies[name].priority if name in self.policies else None
            return priority is None, priority or 0, registered[name]

        return sorted(registered, key=key)

    def has(self, hook_name: str) -> bool:
        """True if at least one plugin implements ``hook_name`` (hot-path guard)."""
        return bool(self._impls[hook_name])

    def implementers(self, hook_name: str) -> list[str]:
        """Plugin names implementing ``hook_name``, in calling order."""
        return [impl.plugin_name for impl in self._impls[hook_name]]

    def count_error(self, plugin_name: str, hook_name: str, what: str) -> None:
        """Count an error found in an answer after the call (e.g. an unknown modifier)."""
        for impl in self._impls[hook_name]:
            if impl.plugin_name == plugin_name:
                log.error("plugin %s: %s: %s", plugin_name, hook_name, what)
                self._failed(impl, what, timed_out=False)
                return

    def forget_plugin(self, plugin_name: str) -> None:
        """Drop the counters and policy of an unloaded plugin."""
        self.policies.pop(plugin_name, None)
        for key in [key for key in self.stats if key[0] == plugin_name]:
            del self.stats[key]

    # -- calling ------------------------------------------------------------------------

    def _bad_arguments(self, hook_name: str, kwargs: dict[str, Any]) -> NoReturn:
        """The kernel called a hook with arguments that are not its hookspec's.

        Callers test ``kwargs.keys() != self._parameters[hook_name]`` inline, only when
        an implementation is about to run: a set comparison of a few names.
        """
        expected = self._parameters[hook_name]
        missing = sorted(expected - kwargs.keys())
        unknown = sorted(kwargs.keys() - expected)
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown {', '.join(unknown)}")
        raise TypeError(
            f"hook {hook_name} called with arguments ({', '.join(kwargs)}): {'; '.join(problems)}; "
            f"its hookspec takes ({', '.join(sorted(expected))})"
        )

    async def _call(self, impl: _Impl, hook_name: str, kwargs: dict[str, Any], timeout: float) -> Any:
        """Call one implementation under its deadline; an error or a timeout is logged,
        counted, and returned as ``_FAILED`` (cancellation is not an Exception: it passes)."""
        stats = impl.stats
        stats.calls += 1
        started = perf_counter()
        try:
            result = impl.function(*impl.arguments(kwargs))
            if not inspect.isawaitable(result):
                return result
            with trio.move_on_after(impl.policy.hook_timeout or timeout):
                return await result
        except Exception as exc:
            log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
            self._failed(impl, repr(exc), timed_out=False)
            return _FAILED
        finally:
            stats.seconds += perf_counter() - started
        log.warning("plugin %s timed out in %s", impl.plugin_name, hook_name)
        self._failed(impl, "timeout", timed_out=True)
        return _FAILED

    def _breaker_open(self, impl: _Impl) -> bool:
        policy = impl.policy
        if not policy.open_until:
            return False
        if trio.current_time() >= policy.open_until:
            policy.open_until = 0.0  # half-open: try the plugin again
            return False
        return True

    def _failed(self, impl: _Impl, what: str, timed_out: bool) -> None:
        stats = impl.stats
        if timed_out:
            stats.timeouts += 1
        else:
            stats.errors += 1
        stats.consecutive_failures += 1
        stats.last_error = what
        policy = impl.policy
        if policy.breaker_threshold and stats.consecutive_failures >= policy.breaker_threshold:
            policy.open_until = trio.current_time() + policy.breaker_cooldown
            log.warning(
                "plugin %s: %d consecutive failures, not called for %.0f s",
                impl.plugin_name,
                stats.consecutive_failures,
                policy.breaker_cooldown,
            )

    async def decide(self, hook_name: str, **kwargs: Any) -> Answer | None:
        """Ask the implementations of a decision hook in order; first answer wins.

        Returns ``None`` when nobody answered (the caller applies the default policy).
        """
        return (await self.decide_with_plugin(hook_name, **kwargs))[0]

    async def decide_with_plugin(self, hook_name: str, **kwargs: Any) -> tuple[Answer | None, str | None]:
        """Like :meth:`decide`, also naming the plugin that answered (None: nobody)."""
        impls = self._impls[hook_name]
        if impls and kwargs.keys() != self._parameters[hook_name]:
            self._bad_arguments(hook_name, kwargs)
        for impl in impls:
            if self._breaker_open(impl):
                if impl.policy.on_error == "next":
                    continue
                return PLUGIN_FAILURE, impl.plugin_name
            answer = await self._call(impl, hook_name, kwargs, self.hook_timeout)
            if answer is not _FAILED and answer is not None and not isinstance(answer, (Allow, Deny, AuthContinue)):
                log.error(
                    "plugin %s answered %s with %r, not allow()/deny()/None",
                    impl.plugin_name,
                    hook_name,
                    answer,
                )
                self._failed(impl, f"bad answer {answer!r}", timed_out=False)
                answer = _FAILED
            if answer is _FAILED:
                if impl.policy.on_error == "next":
                    continue
                return PLUGIN_FAILURE, impl.plugin_name
            impl.stats.consecutive_failures = 0
            if answer is not None:
                return answer, impl.plugin_name
        return None, None

    async def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Run every implementation of a notification hook; failures are counted."""
        impls = self._impls[hook_name]
        if impls and kwargs.keys() != self._parameters[hook_name]:
            self._bad_arguments(hook_name, kwargs)
        for impl in impls:
            if self._breaker_open(impl):
                continue
            if await self._call(impl, hook_name, kwargs, self.notification_timeout) is not _FAILED:
                impl.stats.consecutive_failures = 0

    async def provide(self, hook_name: str, default: Any = None, *, failed: Any = None, **kwargs: Any) -> Any:
        """Call the first implementation of a provider hook: ``default`` when there is
        none or it answers None, ``failed`` (``default`` unless given) when it fails."""
        impls = self._impls[hook_name]
        if not impls:
            return default
        if kwargs.keys() != self._parameters[hook_name]:
            self._bad_arguments(hook_name, kwargs)
        impl = impls[0]
        if failed is None:
            failed = default
        if self._breaker_open(impl):
            return failed
        result = await self._call(impl, hook_name, kwargs, self.hook_timeout)
        if result is _FAILED:
            return failed
        impl.stats.consecutive_failures = 0
        return default if result is None else result

    def provide_now(self, hook_name: str, **kwargs: Any) -> Any:
        """Call the first implementation of a synchronous provider hook (hookspecs'
        ``SYNCHRONOUS_HOOKS``) without awaiting: None when there is none or it failed.
        For the delivery path, where an ``await`` per message would cost too much."""
        impls = self._impls[hook_name]
        if not impls:
            return None
        impl = impls[0]
        if self._breaker_open(impl):
            return None
        stats = impl.stats
        stats.calls += 1
        try:
            result = impl.function(*impl.arguments(kwargs))
        except Exception as exc:
            log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
            self._failed(impl, repr(exc), timed_out=False)
            return None
        stats.consecutive_failures = 0
        return result


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_FAILED = _Sentinel("<failed>")
