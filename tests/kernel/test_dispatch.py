"""Tests for ternmq.kernel.hooks.dispatch: the HookDispatcher over a bare pluggy PluginManager.

Order (equal to pluggy's own, explicit priority first), first-answer-wins for decision
hooks, sync and async implementations, contained errors, deadlines, the circuit
breaker, trio.Cancelled propagation, and the "nobody implements it" fast path.
Timing tests use pytest-trio's ``autojump_clock``: deadlines are exact and instant.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import pluggy
import pytest
import trio
import trio.lowlevel

from ternmq.kernel import hookspecs
from ternmq.kernel.hooks.dispatch import PLUGIN_FAILURE, HookDispatcher, PluginPolicy
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import ClientInfo, Message, allow, auth_continue, deny

from helpers import eventually

CLIENT = ClientInfo("c1", username="u1", protocol_level=5)
MESSAGE = Message("a/b", b"x", 1)


def make_pm() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def impl(hook: str, function: Callable[..., Any], **marks: Any) -> Any:
    """A plugin object implementing ``hook`` with ``function`` (pluggy's markers in ``marks``)."""
    return types.SimpleNamespace(**{hook: hookimpl(**marks)(function)})


def setup(
    *plugins: tuple[str, Any], policies: dict[str, PluginPolicy] | None = None, **dispatcher_kwargs: Any
) -> tuple[pluggy.PluginManager, HookDispatcher]:
    pm = make_pm()
    dispatcher = HookDispatcher(pm, **dispatcher_kwargs)
    dispatcher.policies.update(policies or {})
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    dispatcher.rebuild()
    return pm, dispatcher


def notifier(calls: list[str], label: str, **marks: Any) -> Any:
    def on_plugin_unloaded(name: str) -> None:
        calls.append(label)

    return impl("on_plugin_unloaded", on_plugin_unloaded, **marks)


def decider(calls: list[str], label: str, answer: Any = None, **marks: Any) -> Any:
    """A plain function that records being called and returns ``answer`` (async or not)."""

    def on_deliver(client: ClientInfo, message: Message) -> Any:
        calls.append(label)
        return answer

    return impl("on_deliver", on_deliver, **marks)


async def decide(dispatcher: HookDispatcher) -> Any:
    return await dispatcher.decide("on_deliver", client=CLIENT, message=MESSAGE)


# ----------------------------------------------------------------------------- order


MIXED_MARKS = [
    ("p1", {}),
    ("p2", {"trylast": True}),
    ("p3", {"tryfirst": True}),
    ("p4", {}),
    ("p5", {"trylast": True}),
    ("p6", {"tryfirst": True}),
    ("p7", {}),
]


async def test_first_registered_is_asked_first_with_tryfirst_and_trylast_within() -> None:
    calls: list[str] = []
    _, dispatcher = setup(*[(name, notifier(calls, name, **marks)) for name, marks in MIXED_MARKS])
    await dispatcher.notify("on_plugin_unloaded", name="x")
    # Registration order (the configuration's order), tryfirst ones ahead and trylast
    # ones behind, each group still in registration order: not pluggy's LIFO.
    assert calls == ["p3", "p6", "p1", "p4", "p7", "p2", "p5"]
    assert dispatcher.implementers("on_plugin_unloaded") == calls
    assert dispatcher.calling_order() == ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]


async def test_a_plugin_registered_again_goes_to_the_end() -> None:
    calls: list[str] = []
    pm, dispatcher = setup(*[(name, notifier(calls, name)) for name in ("a", "b", "c")])
    plugin = pm.unregister(name="a")
    pm.register(plugin, name="a")  # disabled, then enabled again at run time
    dispatcher.rebuild()
    await dispatcher.notify("on_plugin_unloaded", name="x")
    assert calls == ["b", "c", "a"]


async def test_calling_order_after_unregister() -> None:
    calls: list[str] = []
    pm, dispatcher = setup(*[(name, notifier(calls, name, **marks)) for name, marks in MIXED_MARKS])
    pm.unregister(name="p3")
    pm.unregister(name="p4")
    dispatcher.rebuild()
    await dispatcher.notify("on_plugin_unloaded", name="x")
    assert calls == ["p6", "p1", "p7", "p2", "p5"]


async def test_explicit_priority_orders_before_registration_order() -> None:
    calls: list[str] = []
    policies = {"late": PluginPolicy(priority=20), "early": PluginPolicy(priority=-5), "mid": PluginPolicy(priority=3)}
    _, dispatcher = setup(
        ("late", notifier(calls, "late")),
        ("plain1", notifier(calls, "plain1", trylast=True)),
        ("early", notifier(calls, "early", trylast=True)),
        ("plain2", notifier(calls, "plain2")),
        ("mid", notifier(calls, "mid")),
        policies=policies,
    )
    await dispatcher.notify("on_plugin_unloaded", name="x")
    assert calls[:3] == ["early", "mid", "late"]
    # Plugins without a priority follow, in registration order but for trylast.
    assert calls[3:] == ["plain2", "plain1"]
    assert dispatcher.calling_order() == ["early", "mid", "late", "plain1", "plain2"]


async def test_priority_from_manager_settings_orders_calls(broker: Any) -> None:
    calls: list[str] = []

    def wakeup_recorder(label: str) -> Any:
        def on_client_wakeup(client: ClientInfo) -> None:
            calls.append(label)

        return impl("on_client_wakeup", on_client_wakeup)

    async with (
        registered(broker, wakeup_recorder("none"), name="none"),
        registered(broker, wakeup_recorder("second"), name="second", priority=2),
        registered(broker, wakeup_recorder("first"), name="first", priority=1),
    ):
        assert broker.dispatcher.implementers("on_client_wakeup") == ["first", "second", "none"]
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("prio")).reason_code == 0
            await eventually(lambda: len(calls) >= 3)
    assert calls == ["first", "second", "none"]


# ------------------------------------------------------------------- decision hooks


async def test_decision_first_answer_wins_and_later_implementations_are_not_called() -> None:
    calls: list[str] = []

    def lazy_async(label: str, answer: Any) -> Any:
        # A plain function returning a coroutine: calling it is observable even if the
        # coroutine were never awaited, so "not called" means "not even created".
        def on_deliver(client: ClientInfo) -> Any:
            calls.append(label)

            async def run() -> Any:
                calls.append(label + ":awaited")
                return answer

            return run()

        return impl("on_deliver", on_deliver)

    # Registered first = called first (the configuration's order).
    _, dispatcher = setup(
        ("first", decider(calls, "first", None)),
        ("second", lazy_async("second", deny(0x97))),
        ("never", lazy_async("never", allow())),
    )
    answer = await decide(dispatcher)
    assert answer == deny(0x97)
    assert calls == ["first", "second", "second:awaited"]
    assert dispatcher.stats[("never", "on_deliver")].calls == 0


async def test_decision_none_passes_on_and_nobody_answering_returns_none() -> None:
    calls: list[str] = []
    _, dispatcher = setup(("b", decider(calls, "b")), ("a", decider(calls, "a")))
    assert await decide(dispatcher) is None
    assert calls == ["b", "a"]


@pytest.mark.parametrize("answer", [allow(topic="x/y"), deny(0x87, "no"), auth_continue(b"more")])
async def test_decision_answer_of_async_implementation_is_returned(answer: Any) -> None:
    async def on_deliver(client: ClientInfo, message: Message) -> Any:
        await trio.lowlevel.checkpoint()
        assert client == CLIENT and message == MESSAGE
        return answer

    _, dispatcher = setup(("async", impl("on_deliver", on_deliver)))
    assert await decide(dispatcher) == answer
    assert dispatcher.stats[("async", "on_deliver")].calls == 1


async def test_sync_and_async_implementations_mix_in_one_chain() -> None:
    calls: list[str] = []

    async def on_deliver(message: Message) -> Any:
        calls.append("async")
        return None

    _, dispatcher = setup(
        ("async", impl("on_deliver", on_deliver)), ("sync", decider(calls, "sync", allow(payload=b"z")))
    )
    assert await decide(dispatcher) == allow(payload=b"z")
    assert calls == ["async", "sync"]


async def test_implementation_gets_only_the_arguments_it_declares() -> None:
    seen: list[Any] = []

    def on_deliver(message: Message) -> None:
        seen.append(message)

    _, dispatcher = setup(("opt-in", impl("on_deliver", on_deliver)))
    await decide(dispatcher)
    assert seen == [MESSAGE]


@pytest.mark.parametrize("is_async", [False, True])
async def test_raising_decision_refuses_with_plugin_failure_under_on_error_deny(is_async: bool) -> None:
    calls: list[str] = []

    def sync_boom(client: ClientInfo) -> Any:
        raise RuntimeError("boom")

    async def async_boom(client: ClientInfo) -> Any:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("boom")

    _, dispatcher = setup(
        ("broken", impl("on_deliver", async_boom if is_async else sync_boom)),
        ("after", decider(calls, "after", allow())),
    )
    assert await decide(dispatcher) is PLUGIN_FAILURE
    assert PLUGIN_FAILURE.reason_code == 0x80
    stats = dispatcher.stats[("broken", "on_deliver")]
    assert (stats.calls, stats.errors, stats.timeouts) == (1, 1, 0)
    assert "boom" in stats.last_error
    assert calls == []  # refused: the next plugin is not asked


async def test_raising_decision_passes_to_next_under_on_error_next() -> None:
    calls: list[str] = []

    def boom(client: ClientInfo) -> Any:
        raise ValueError("bad")

    _, dispatcher = setup(
        ("broken", impl("on_deliver", boom)),
        ("after", decider(calls, "after", allow())),
        policies={"broken": PluginPolicy(on_error="next")},
    )
    assert await decide(dispatcher) == allow()
    assert calls == ["after"]
    assert dispatcher.stats[("broken", "on_deliver")].errors == 1


async def test_bad_answer_type_counts_as_error_and_refuses() -> None:
    calls: list[str] = []
    _, dispatcher = setup(("bad", decider(calls, "bad", True)), ("ok", decider(calls, "ok", allow())))
    assert await decide(dispatcher) is PLUGIN_FAILURE
    stats = dispatcher.stats[("bad", "on_deliver")]
    assert stats.errors == 1 and "bad answer" in stats.last_error
    assert calls == ["bad"]


async def test_hanging_decision_meets_hook_timeout_and_counts_a_timeout(autojump_clock: Any) -> None:
    async def on_deliver() -> Any:
        await trio.sleep_forever()

    _, dispatcher = setup(("slow", impl("on_deliver", on_deliver)), hook_timeout=3.0)
    start = trio.current_time()
    assert await decide(dispatcher) is PLUGIN_FAILURE
    assert trio.current_time() - start == pytest.approx(3.0)
    stats = dispatcher.stats[("slow", "on_deliver")]
    assert (stats.timeouts, stats.errors, stats.last_error) == (1, 0, "timeout")


async def test_per_plugin_hook_timeout_overrides_the_dispatchers(autojump_clock: Any) -> None:
    calls: list[str] = []

    async def on_deliver() -> Any:
        await trio.sleep_forever()

    _, dispatcher = setup(
        ("slow", impl("on_deliver", on_deliver)),
        ("next", decider(calls, "next", deny(0x97))),
        policies={"slow": PluginPolicy(hook_timeout=0.25, on_error="next")},
        hook_timeout=60.0,
    )
    start = trio.current_time()
    assert await decide(dispatcher) == deny(0x97)
    assert trio.current_time() - start == pytest.approx(0.25)
    assert dispatcher.stats[("slow", "on_deliver")].timeouts == 1
    assert calls == ["next"]


async def test_per_plugin_hook_timeout_from_manager_settings_refuses_connect(broker: Any) -> None:
    class Hanging:
        @hookimpl
        async def auth_on_register(self) -> Any:
            await trio.sleep_forever()

    async with registered(broker, Hanging(), name="hanging", hook_timeout=0.2):
        async with MQTTTestClient.open(broker.port()) as client:
            start = trio.current_time()
            connack = await client.connect("late")
            elapsed = trio.current_time() - start
        assert connack.reason_code == 0x80
        assert 0.2 <= elapsed < broker.dispatcher.hook_timeout
        assert broker.dispatcher.stats[("hanging", "auth_on_register")].timeouts == 1


# ---------------------------------------------------------------- trio.Cancelled


async def hang(*args: Any) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize("family", ["decide", "notify", "provide"])
async def test_outer_cancellation_propagates_through_the_dispatcher(family: str, autojump_clock: Any) -> None:
    hook = {"decide": "on_deliver", "notify": "on_plugin_unloaded", "provide": "retain_lookup"}[family]

    async def hanging() -> None:
        await trio.sleep_forever()

    _, dispatcher = setup(("hang", impl(hook, hanging)), hook_timeout=100.0, notification_timeout=100.0)
    kwargs = {
        "decide": {"client": CLIENT, "message": MESSAGE},
        "notify": {"name": "x"},
        "provide": {"topic_filter": "#"},
    }[family]
    reached_after_call = False
    with trio.move_on_after(1.0) as scope:
        await getattr(dispatcher, family)(hook, **kwargs)
        reached_after_call = True
    assert scope.cancelled_caught
    assert not reached_after_call  # the dispatcher did not swallow Cancelled
    assert trio.current_time() == pytest.approx(1.0)
    stats = dispatcher.stats[("hang", hook)]
    assert (stats.errors, stats.timeouts) == (0, 0)  # a cancellation is not the plugin's fault


# --------------------------------------------------------------- notification hooks


async def test_notification_failure_does_not_stop_later_implementations(autojump_clock: Any) -> None:
    calls: list[str] = []

    def boom(name: str) -> None:
        raise RuntimeError("notification failed")

    async def slow(name: str) -> None:
        await trio.sleep_forever()

    _, dispatcher = setup(
        ("first", notifier(calls, "first")),
        ("boom", impl("on_plugin_unloaded", boom)),
        ("middle", notifier(calls, "middle")),
        ("slow", impl("on_plugin_unloaded", slow)),
        ("last", notifier(calls, "last")),
        notification_timeout=0.5,
    )
    start = trio.current_time()
    assert await dispatcher.notify("on_plugin_unloaded", name="x") is None
    assert calls == ["first", "middle", "last"]
    assert trio.current_time() - start == pytest.approx(0.5)
    assert dispatcher.stats[("boom", "on_plugin_unloaded")].errors == 1
    assert dispatcher.stats[("slow", "on_plugin_unloaded")].timeouts == 1
    assert dispatcher.stats[("last", "on_plugin_unloaded")].calls == 1


async def test_notification_answers_are_ignored() -> None:
    calls: list[str] = []

    def answers(name: str) -> Any:
        calls.append("answers")
        return deny()

    _, dispatcher = setup(("answers", impl("on_plugin_unloaded", answers)), ("after", notifier(calls, "after")))
    await dispatcher.notify("on_plugin_unloaded", name="x")
    assert calls == ["answers", "after"]


# ------------------------------------------------------------------- provider hooks


async def test_provide_calls_only_the_first_implementation() -> None:
    calls: list[str] = []

    def lookup(label: str) -> Any:
        def retain_lookup(topic_filter: str) -> Any:
            calls.append(label)
            return [Message(topic_filter, label.encode())]

        return impl("retain_lookup", retain_lookup)

    _, dispatcher = setup(("first", lookup("first")), ("second", lookup("second")))
    result = await dispatcher.provide("retain_lookup", default=(), topic_filter="t")
    assert [m.payload for m in result] == [b"first"]
    assert calls == ["first"]


async def test_provide_async_implementation_and_default_on_none_error_or_absence(autojump_clock: Any) -> None:
    async def retain_lookup(topic_filter: str) -> Any:
        await trio.lowlevel.checkpoint()
        return [Message(topic_filter)]

    _, dispatcher = setup(("async", impl("retain_lookup", retain_lookup)))
    assert [m.topic for m in await dispatcher.provide("retain_lookup", default=(), topic_filter="q")] == ["q"]

    def returns_none(topic_filter: str) -> None:
        return None

    def raises(topic_filter: str) -> None:
        raise OSError("store down")

    for name, function in [("none", returns_none), ("raises", raises), ("hangs", hang)]:
        _, dispatcher = setup((name, impl("retain_lookup", function)), hook_timeout=1.0)
        sentinel = object()
        assert await dispatcher.provide("retain_lookup", default=sentinel, topic_filter="q") is sentinel
    assert dispatcher.stats[("hangs", "retain_lookup")].timeouts == 1
    _, empty = setup()
    assert await empty.provide("retain_lookup", default="nothing", topic_filter="q") == "nothing"


async def test_provide_error_is_counted() -> None:
    def retain_store(message: Message) -> None:
        raise RuntimeError("disk full")

    _, dispatcher = setup(("store", impl("retain_store", retain_store)))
    await dispatcher.provide("retain_store", message=MESSAGE)
    assert dispatcher.stats[("store", "retain_store")].errors == 1


# ------------------------------------------------------------------ circuit breaker


async def test_circuit_breaker_opens_after_threshold_and_retries_after_cooldown(autojump_clock: Any) -> None:
    attempts: list[float] = []
    failing = True

    def on_deliver() -> Any:
        attempts.append(trio.current_time())
        if failing:
            raise RuntimeError("down")
        return allow()

    policy = PluginPolicy(breaker_threshold=3, breaker_cooldown=10.0)
    _, dispatcher = setup(("flaky", impl("on_deliver", on_deliver)), policies={"flaky": policy})
    for _ in range(3):
        assert await decide(dispatcher) is PLUGIN_FAILURE
    assert len(attempts) == 3
    # Open: refused (on_error="deny") without calling the plugin.
    for _ in range(5):
        assert await decide(dispatcher) is PLUGIN_FAILURE
    await trio.sleep(9.9)
    assert await decide(dispatcher) is PLUGIN_FAILURE
    assert len(attempts) == 3
    assert dispatcher.stats[("flaky", "on_deliver")].errors == 3
    await trio.sleep(0.2)  # cooldown over: half-open, the plugin is tried again
    failing = False
    assert await decide(dispatcher) == allow()
    assert len(attempts) == 4
    assert dispatcher.stats[("flaky", "on_deliver")].consecutive_failures == 0
    assert await decide(dispatcher) == allow()
    assert len(attempts) == 5


async def test_circuit_breaker_reopens_when_the_retry_fails(autojump_clock: Any) -> None:
    attempts: list[str] = []

    def on_deliver() -> Any:
        attempts.append("x")
        raise RuntimeError("still down")

    policy = PluginPolicy(breaker_threshold=2, breaker_cooldown=5.0)
    _, dispatcher = setup(("flaky", impl("on_deliver", on_deliver)), policies={"flaky": policy})
    for _ in range(2):
        await decide(dispatcher)
    await trio.sleep(5.1)
    await decide(dispatcher)
    assert len(attempts) == 3
    await decide(dispatcher)
    assert len(attempts) == 3  # one failure after the cooldown opens it again


async def test_open_breaker_with_on_error_next_skips_to_the_next_plugin(autojump_clock: Any) -> None:
    calls: list[str] = []

    async def slow() -> Any:
        await trio.sleep_forever()

    policy = PluginPolicy(breaker_threshold=1, breaker_cooldown=30.0, on_error="next", hook_timeout=1.0)
    _, dispatcher = setup(
        ("slow", impl("on_deliver", slow)), ("backup", decider(calls, "backup", allow())), policies={"slow": policy}
    )
    start = trio.current_time()
    assert await decide(dispatcher) == allow()
    assert trio.current_time() - start == pytest.approx(1.0)
    start = trio.current_time()
    assert await decide(dispatcher) == allow()
    assert trio.current_time() == start  # the open breaker skipped the slow plugin at once
    assert calls == ["backup", "backup"]
    assert dispatcher.stats[("slow", "on_deliver")].calls == 1


async def test_circuit_breaker_skips_notifications_while_open(autojump_clock: Any) -> None:
    attempts: list[str] = []

    def on_plugin_unloaded(name: str) -> None:
        attempts.append(name)
        raise RuntimeError("x")

    policy = PluginPolicy(breaker_threshold=1, breaker_cooldown=2.0)
    _, dispatcher = setup(("n", impl("on_plugin_unloaded", on_plugin_unloaded)), policies={"n": policy})
    await dispatcher.notify("on_plugin_unloaded", name="1")
    await dispatcher.notify("on_plugin_unloaded", name="2")
    assert attempts == ["1"]
    await trio.sleep(2.5)
    await dispatcher.notify("on_plugin_unloaded", name="3")
    assert attempts == ["1", "3"]


async def test_success_resets_the_consecutive_failure_count() -> None:
    results = iter([RuntimeError("1"), RuntimeError("2"), None, RuntimeError("3"), RuntimeError("4")])

    def on_deliver() -> Any:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    policy = PluginPolicy(breaker_threshold=3, breaker_cooldown=100.0)
    _, dispatcher = setup(("p", impl("on_deliver", on_deliver)), policies={"p": policy})
    for _ in range(5):
        await decide(dispatcher)
    stats = dispatcher.stats[("p", "on_deliver")]
    assert (stats.errors, stats.consecutive_failures, policy.open_until) == (4, 2, 0.0)


# ------------------------------------------------------------- nobody implements it


async def test_has_is_false_and_dispatch_does_no_work_for_unimplemented_hooks() -> None:
    calls: list[str] = []
    _, dispatcher = setup(("only-deliver", decider(calls, "d")))
    assert dispatcher.has("on_deliver")
    for hook in hookspecs.DECISION_HOOKS + hookspecs.NOTIFICATION_HOOKS + hookspecs.PROVIDER_HOOKS:
        if hook != "on_deliver":
            assert not dispatcher.has(hook), hook
            assert dispatcher.implementers(hook) == []
    before = dict(dispatcher.stats)
    assert await dispatcher.decide("auth_on_publish", client=CLIENT, message=MESSAGE, is_will=False) is None
    await dispatcher.notify("on_publish", client=CLIENT, message=MESSAGE)
    assert await dispatcher.provide("retain_lookup", default=(), topic_filter="#") == ()
    assert dispatcher.stats == before
    assert not any(hook in ("auth_on_publish", "on_publish", "retain_lookup") for _, hook in dispatcher.stats)
    assert calls == []


async def test_has_follows_register_and_unregister() -> None:
    calls: list[str] = []
    pm, dispatcher = setup()
    assert not dispatcher.has("on_deliver")
    pm.register(decider(calls, "d"), name="d")
    assert not dispatcher.has("on_deliver")  # the snapshot changes only on rebuild
    dispatcher.rebuild()
    assert dispatcher.has("on_deliver")
    pm.unregister(name="d")
    dispatcher.rebuild()
    assert not dispatcher.has("on_deliver")
    assert await decide(dispatcher) is None
    assert calls == []


async def test_forget_plugin_drops_its_counters_and_policy() -> None:
    def boom() -> Any:
        raise RuntimeError("x")

    pm, dispatcher = setup(("gone", impl("on_deliver", boom)), policies={"gone": PluginPolicy(on_error="next")})
    await decide(dispatcher)
    assert dispatcher.stats[("gone", "on_deliver")].errors == 1
    pm.unregister(name="gone")
    dispatcher.rebuild()
    dispatcher.forget_plugin("gone")
    assert not any(name == "gone" for name, _ in dispatcher.stats)
    assert "gone" not in dispatcher.policies


# ------------------------------------------------------- the kernel's wrong arguments


def everything(calls: list[str]) -> Any:
    """A plugin implementing one hook of each family (all arguments declared)."""

    class Everything:
        @hookimpl
        def auth_on_publish(self, client: ClientInfo, message: Message, is_will: bool) -> Any:
            calls.append("auth_on_publish")
            return allow()

        @hookimpl
        def on_publish(self, client: ClientInfo, message: Message) -> None:
            calls.append("on_publish")

        @hookimpl
        def retain_lookup(self, topic_filter: str) -> Any:
            calls.append("retain_lookup")
            return [MESSAGE]

    return Everything()


WRONG_CALLS = {
    "decide, missing": (
        "decide",
        "auth_on_publish",
        {"client": CLIENT, "message": MESSAGE},
        "missing is_will",
    ),
    "decide_with_plugin, unknown": (
        "decide_with_plugin",
        "auth_on_publish",
        {"client": CLIENT, "message": MESSAGE, "is_will": False, "retain": True},
        "unknown retain",
    ),
    "notify, misspelt": (
        "notify",
        "on_publish",
        {"client": CLIENT, "msg": MESSAGE},
        "missing message; unknown msg",
    ),
    "provide, missing": ("provide", "retain_lookup", {"default": ()}, "missing topic_filter"),
}


@pytest.mark.parametrize("case", sorted(WRONG_CALLS))
async def test_wrong_arguments_raise_to_the_kernel_and_are_not_counted_against_the_plugin(case: str) -> None:
    method, hook, kwargs, what = WRONG_CALLS[case]
    calls: list[str] = []
    policy = PluginPolicy(breaker_threshold=1, breaker_cooldown=100.0)
    _, dispatcher = setup(("p", everything(calls)), policies={"p": policy})
    with pytest.raises(TypeError) as raised:
        await getattr(dispatcher, method)(hook, **kwargs)
    message = str(raised.value)
    assert f"hook {hook} called with arguments" in message and what in message, message
    expected = sorted(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"its hookspec takes ({', '.join(expected)})" in message, message
    # Nothing was called, nothing is counted, the plugin's breaker stays closed.
    assert calls == []
    stats = dispatcher.stats[("p", hook)]
    assert (stats.calls, stats.errors, stats.consecutive_failures, policy.open_until) == (0, 0, 0, 0.0)


async def test_right_arguments_still_reach_every_family() -> None:
    calls: list[str] = []
    _, dispatcher = setup(("p", everything(calls)))
    assert await dispatcher.decide("auth_on_publish", client=CLIENT, message=MESSAGE, is_will=False) == allow()
    await dispatcher.notify("on_publish", client=CLIENT, message=MESSAGE)
    assert await dispatcher.provide("retain_lookup", default=(), topic_filter="#") == [MESSAGE]
    assert calls == ["auth_on_publish", "on_publish", "retain_lookup"]
