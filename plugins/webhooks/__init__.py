"""Webhooks: hooks answered and announced over HTTP (the ``webhooks`` built-in plugin).

VerneMQ-compatible on the wire: receivers written for VerneMQ's ``vmq_webhooks`` work
unchanged (docs/webhooks.md has the whole contract). Endpoints come from the
configuration::

    [plugins.webhooks]
    endpoints = [
      { hook = "auth_on_register", endpoint = "http://127.0.0.1:8080/auth" },
      { hook = "on_publish", endpoint = "http://127.0.0.1:8080/events", base64payload = false },
    ]

and at run time from ``ternmq-admin webhooks register hook=H endpoint=URL [--base64payload=B]
[--no_payload=B] [--response_timeout=MS] [--on_failure=deny|next] [--transient]``,
``webhooks deregister hook=H endpoint=URL``, ``webhooks show``, ``webhooks cache show
[--reset]`` and ``webhooks cache clear``. Run-time registrations (not ``--transient``)
are kept across restarts: with a store plugin loaded before this one (``sqlite_store``)
as its records (namespace ``webhooks``, one per registration, durable before the
command answers; ``<data_dir>/webhooks.json`` is imported the first time and renamed
``webhooks.json.imported``); without a store, or when ``registrations_file`` is set, in
that JSON file.

* The auth hooks (``auth_on_register``, ``auth_on_publish``, ``auth_on_subscribe``, their
  ``_m5`` twins), ``on_unsubscribe(_m5)`` and ``on_auth_m5`` are awaited: the endpoints of
  a hook are asked in order until one answers ``ok`` or an error (``next`` asks the next
  one, then the next plugin). An endpoint that fails (no reply in time, refused
  connection, not 200, not JSON, no usable ``result``, a bad modifier) is handled by its
  ``on_failure``: ``deny`` (the default, as VerneMQ) or ``next``.
* The other hooks are notifications: queued (at most ``queue_size``; when full the
  oldest is dropped and counted) and posted by the plugin's own ``workers``, so a slow
  endpoint never slows a publisher. ``on_deliver`` is one of them.
* Replies of the three auth hooks with ``cache-control: max-age=N`` are cached for N
  seconds (``no-store``, ``no-cache`` and ``max-age=0`` are not), at most ``cache_size``
  answers.

Config keys (``[plugins.webhooks]``): ``endpoints`` (a list of tables with ``hook``,
``endpoint`` and optionally ``base64payload``, ``no_payload``, ``response_timeout``,
``on_failure``), the defaults ``response_timeout`` (5000 ms), ``on_failure`` ("deny"),
``base64payload`` (true); ``cache_size`` (10000), ``queue_size`` (10000), ``workers``
(8), ``pool_max_connections`` (100), ``pool_keepalive`` (60 s), ``registrations_file``
(none: the store's records if a store is loaded, else ``webhooks.json`` in the broker's
data directory).

Metrics, per hook and endpoint: ``webhooks_requests``, ``webhooks_errors``,
``webhooks_timeouts``, ``webhooks_cancelled``, ``webhooks_cache_hits``,
``webhooks_cache_misses``, ``webhooks_dropped``, ``webhooks_bytes_sent``,
``webhooks_latency_seconds_sum``; and ``webhooks_cache_entries``,
``webhooks_queue_length``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from ternmq.kernel import (
    Allow,
    AuthContinue,
    ClientInfo,
    Deny,
    Message,
    Service,
    TopicSubscription,
    allow,
    deny,
    hookimpl,
)

from . import wire
from .calls import AnswerCache, Caller, CallFailed, Stats, cache_key
from .commands import add_commands
from .endpoints import NAMESPACE, Defaults, Endpoint, Registrations, check_policy, check_timeout, endpoint_from
from .wire import BadReply, webhook_name

log = logging.getLogger("ternmq.plugins.webhooks")

Answer = Allow | Deny | AuthContinue
# A body for one endpoint's payload options.
BodyOf = Callable[[wire.PayloadOptions], dict[str, Any]]


def _endpoint_tables(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of tables {{hook = ..., endpoint = ...}}, not {value!r}")
    return tuple(value)


def _checked(check: Callable[[Any], None]) -> Callable[[Any, Any, Any], None]:
    def validator(instance: Any, attribute: Any, value: Any) -> None:
        check(value)

    return validator


def _check_endpoints(instance: Any, attribute: Any, tables: tuple[Mapping[str, Any], ...]) -> None:
    defaults = instance.defaults if instance is not None else Defaults()
    seen: set[tuple[str, str]] = set()
    for number, table in enumerate(tables, 1):
        try:
            endpoint = endpoint_from(table, defaults)
        except ValueError as exc:
            raise ValueError(f"entry {number}: {exc}") from None
        if (endpoint.hook, endpoint.url) in seen:
            raise ValueError(f"entry {number}: {endpoint.url} is listed twice for {endpoint.hook}")
        seen.add((endpoint.hook, endpoint.url))


@attrs.frozen
class Config:
    endpoints: tuple[Mapping[str, Any], ...] = attrs.field(
        factory=tuple, converter=_endpoint_tables, validator=_check_endpoints
    )
    response_timeout: int = attrs.field(default=5000, validator=_checked(check_timeout))
    on_failure: str = attrs.field(default="deny", validator=_checked(check_policy))
    base64payload: bool = True
    cache_size: int = attrs.field(default=10_000, validator=attrs.validators.ge(0))
    queue_size: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
    workers: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    pool_max_connections: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    pool_keepalive: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    registrations_file: Path | None = None

    @property
    def defaults(self) -> Defaults:
        return Defaults(self.base64payload, self.response_timeout, self.on_failure)


@attrs.frozen
class Notification:
    endpoint: Endpoint
    hook: str
    body: dict[str, Any]


class Plugin:
    """Calls the endpoints registered for each hook (module docstring)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config = config or Config()
        self.registrations = Registrations([endpoint_from(table, config.defaults) for table in config.endpoints])
        self.caller = Caller(max_connections=config.pool_max_connections, keepalive_expiry=config.pool_keepalive)
        self.cache = AnswerCache(config.cache_size)
        # Cache hits and misses per (hook, endpoint) when ``webhooks cache show --reset`` ran.
        self.cache_counts_reset: dict[tuple[str, str], tuple[int, int]] = {}
        self._queue_in, self._queue_out = trio.open_memory_channel[Notification](config.queue_size)

    # -- registration hooks ----------------------------------------------------------

    @hookimpl
    def register_admin_commands(self, registry: Any) -> None:
        add_commands(registry, self)

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        labels = ("hook", "endpoint")
        for field in attrs.fields(Stats):
            name = "webhooks_latency_seconds_sum" if field.name == "latency_seconds" else f"webhooks_{field.name}"
            registry.counter(
                name,
                lambda field=field.name: {key: getattr(stats, field) for key, stats in self.caller.stats.items()},
                f"webhook calls: {field.name.replace('_', ' ')}",
                labels=labels,
            )
        registry.gauge("webhooks_cache_entries", lambda: len(self.cache), "cached auth answers")
        registry.gauge("webhooks_queue_length", self.queue_length, "notifications waiting to be posted")

    def queue_length(self) -> int:
        return self._queue_out.statistics().current_buffer_used

    # -- decision hooks: awaited -----------------------------------------------------

    @hookimpl
    def auth_on_register(
        self, client: ClientInfo, password: bytes | None, clean_start: bool, properties: Mapping[str, Any]
    ) -> Coroutine[Any, Any, Answer | None] | None:
        hook = webhook_name("auth_on_register", client)
        chain = self.registrations.chain(hook)
        if not chain:
            return None
        return self._decide(hook, chain, lambda options: wire.register_body(client, password, clean_start, properties))

    @hookimpl
    def auth_on_publish(self, client: ClientInfo, message: Message) -> Coroutine[Any, Any, Answer | None] | None:
        hook = webhook_name("auth_on_publish", client)
        chain = self.registrations.chain(hook)
        if not chain:
            return None
        body: BodyOf = lambda options: wire.publish_body(client, message, options)  # noqa: E731
        return self._decide(hook, chain, body, asked=client.mountpoint)

    @hookimpl
    def auth_on_subscribe(
        self, client: ClientInfo, subscriptions: Sequence[TopicSubscription], properties: Mapping[str, Any]
    ) -> Coroutine[Any, Any, Answer | None] | None:
        hook = webhook_name("auth_on_subscribe", client)
        chain = self.registrations.chain(hook)
        if not chain:
            return None
        body: BodyOf = lambda options: wire.subscribe_body(client, subscriptions, properties)  # noqa: E731
        return self._decide(hook, chain, body, asked=subscriptions)

    @hookimpl
    def auth_on_unsubscribe(
        self, client: ClientInfo, topic_filters: Sequence[str], properties: Mapping[str, Any]
    ) -> Coroutine[Any, Any, Answer | None] | None:
        # VerneMQ's on_unsubscribe may rewrite the filters: ternmq's decision hook.
        hook = webhook_name("on_unsubscribe", client)
        chain = self.registrations.chain(hook)
        if not chain:
            return None
        body: BodyOf = lambda options: wire.unsubscribe_body(client, topic_filters, properties)  # noqa: E731
        return self._never_refused(hook, self._decide(hook, chain, body))

    async def _never_refused(self, hook: str, decided: Awaitable[Answer | None]) -> Answer | None:
        """An UNSUBSCRIBE cannot be refused in VerneMQ (and MQTT 3 has no code to say so):
        an error reply, or a failure under on_failure = "deny", unsubscribes as asked."""
        answer = await decided
        if isinstance(answer, Deny):
            log.warning("%s refused (%s): unsubscribed as asked", hook, answer.reason_string)
            return allow()
        return answer

    @hookimpl
    def on_auth(self, client: ClientInfo, method: str, data: bytes | None) -> Coroutine[Any, Any, Answer | None] | None:
        chain = self.registrations.chain("on_auth_m5")
        if not chain:
            return None
        return self._decide("on_auth_m5", chain, lambda options: wire.auth_body(client, method, data), asked=method)

    async def _decide(self, hook: str, chain: Sequence[Endpoint], body_of: BodyOf, asked: Any = None) -> Answer | None:
        """Ask the endpoints in order: the first ``ok`` or error answers, ``next`` and a
        failure under ``on_failure = "next"`` go on to the next one."""
        for endpoint in chain:
            try:
                answer = await self._ask(endpoint, hook, body_of, asked)
            except UnicodeDecodeError:  # a password JSON cannot carry: none can match it
                return deny(wire.BAD_USERNAME_OR_PASSWORD, "password is not UTF-8")
            except (CallFailed, BadReply) as exc:
                if endpoint.on_failure == "next":
                    log.warning("webhook %s failed (on_failure = next): %s", hook, exc)
                    continue
                log.error("webhook %s failed: %s", hook, exc)
                return _failure_answer(hook)
            if answer is not None:
                return answer
        return None

    async def _ask(self, endpoint: Endpoint, hook: str, body_of: BodyOf, asked: Any) -> Answer | None:
        options = endpoint.options
        body = body_of(options)
        key = cache_key(hook, endpoint.url, body) if hook in wire.CACHED_HOOKS else None
        if key is not None:
            stats = self.caller.stats_of(hook, endpoint.url)
            cached = self.cache.get(key)
            if cached is not None:
                stats.cache_hits += 1
                return cached  # type: ignore[no-any-return]
            stats.cache_misses += 1
        reply = await self.caller.post(endpoint, hook, body)
        try:
            answer = wire.answer_of(hook, reply.json, options, asked)
        except BadReply:
            self.caller.stats_of(hook, endpoint.url).errors += 1
            raise
        if key is not None and isinstance(answer, Allow):
            max_age = wire.cache_max_age(reply.cache_control)
            if max_age:
                # A rewritten payload is never cached (VerneMQ's rule): it belongs to one message.
                kept = {name: value for name, value in answer.modifiers.items() if name != "payload"}
                self.cache.put(key, Allow(kept), max_age)
        return answer

    # -- notification hooks: queued --------------------------------------------------

    def _notify(self, hook: str, body_of: BodyOf) -> None:
        for endpoint in self.registrations.chain(hook):
            self._enqueue(Notification(endpoint, hook, body_of(endpoint.options)))

    def _enqueue(self, notification: Notification) -> None:
        while True:
            try:
                self._queue_in.send_nowait(notification)
                return
            except trio.WouldBlock:
                try:
                    oldest = self._queue_out.receive_nowait()
                except trio.WouldBlock:  # pragma: no cover - the workers just took one
                    continue
                self.caller.stats_of(oldest.hook, oldest.endpoint.url).dropped += 1

    @hookimpl
    def on_register(self, client: ClientInfo, properties: Mapping[str, Any]) -> None:
        self._notify(webhook_name("on_register", client), lambda options: wire.registered_body(client, properties))

    @hookimpl
    def on_publish(self, client: ClientInfo, message: Message) -> None:
        self._notify(webhook_name("on_publish", client), lambda options: wire.publish_body(client, message, options))

    @hookimpl
    def on_subscribe(self, client: ClientInfo, subscriptions: Sequence[TopicSubscription]) -> None:
        hook = webhook_name("on_subscribe", client)
        self._notify(hook, lambda options: wire.subscribe_body(client, subscriptions, {}))

    @hookimpl
    def on_deliver(self, client: ClientInfo, message: Message) -> None:
        # A notification in ternmq: an HTTP round trip per delivery must not hold the
        # publisher (VerneMQ's on_deliver webhook does); replies are not read.
        hook = webhook_name("on_deliver", client)
        self._notify(hook, lambda options: wire.publish_body(client, message, options, with_properties=True))

    @hookimpl
    def on_offline_message(self, client_id: str, message: Message, mountpoint: str) -> None:
        hook = "on_offline_message"
        self._notify(hook, lambda options: wire.offline_message_body(client_id, mountpoint, message, options))

    @hookimpl
    def on_client_wakeup(self, client: ClientInfo) -> None:
        self._notify("on_client_wakeup", lambda options: wire.client_body(client.client_id, client.mountpoint))

    @hookimpl
    def on_client_offline(self, client: ClientInfo) -> None:
        self._notify("on_client_offline", lambda options: wire.client_body(client.client_id, client.mountpoint))

    @hookimpl
    def on_client_gone(self, client: ClientInfo) -> None:
        self._notify("on_client_gone", lambda options: wire.client_body(client.client_id, client.mountpoint))

    @hookimpl
    def on_session_expired(self, client_id: str, mountpoint: str) -> None:
        self._notify("on_session_expired", lambda options: wire.client_body(client_id, mountpoint))

    async def _post_notifications(self) -> None:
        async for notification in self._queue_out:
            try:
                await self.caller.post(notification.endpoint, notification.hook, notification.body)
            except CallFailed as exc:
                log.warning("webhook %s: %s", notification.hook, exc)
            except Exception:  # a worker that died would leave the queue to fill up
                log.exception("webhook %s: posting failed", notification.hook)

    # -- run-time registrations ------------------------------------------------------

    def register(self, endpoint: Endpoint) -> None:
        """Add an endpoint at run time (ValueError if it is registered already); kept in
        the store or the registrations file unless transient (durable once
        ``registrations.commit()`` returns). If it cannot be kept (OSError) the endpoint
        is not added either."""
        self.registrations.add(endpoint)
        if endpoint.origin == "runtime":
            try:
                self.registrations.keep(endpoint)
            except OSError:
                self.registrations.remove(endpoint.hook, endpoint.url)
                raise

    def deregister(self, hook: str, url: str) -> Endpoint:
        """Remove an endpoint (KeyError if not registered) and its cached answers; the
        store or the file follows. If that cannot be done (OSError) the endpoint stays."""
        endpoint, position = self.registrations.remove(hook, url)
        if endpoint.origin == "runtime":
            try:
                self.registrations.forget(endpoint)
            except OSError:
                self.registrations.add(endpoint, position)
                raise
        self.cache.forget(hook, url)
        return endpoint

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        file = self.config.registrations_file or service.data_dir / "webhooks.json"
        if self.config.registrations_file is None and service.records_available:
            count = await self.registrations.load_records(service, file, self.config.defaults)
            where = f"the store ({NAMESPACE})"
        else:
            count = self.registrations.load(file, self.config.defaults)
            where = str(file)
        if count:
            log.info("webhooks: %d endpoints registered at run time, from %s", count, where)
        async with (
            httpx.AsyncClient(limits=self.caller.limits, trust_env=False) as client,
            trio.open_nursery() as nursery,
        ):
            self.caller.client = client
            for _ in range(self.config.workers):
                nursery.start_soon(self._post_notifications)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.caller.client = None


def _failure_answer(hook: str) -> Answer:
    """What a failed endpoint answers under ``on_failure = "deny"``: for a CONNECT 0x88
    server unavailable (v3: return code 3), which tells the client to come back rather
    than that its credentials are wrong (VerneMQ sends not-authorized either way);
    otherwise 0x80 unspecified error."""
    if hook.startswith(("auth_on_register", "on_auth")):
        return deny(wire.SERVER_UNAVAILABLE, "webhook failed")
    return deny(wire.UNSPECIFIED_ERROR, "webhook failed")
