# Hookspecs are signatures with docstrings and no bodies (pluggy never calls them).
# mypy: disable-error-code="empty-body"
"""Every hook a ternmq plugin can implement, grouped by family.

Implement a hook with ``@hookimpl`` on a function or method of the same name; declare
only the arguments you need (pluggy's opt-in arguments). ``async def`` implementations
are awaited by the kernel's dispatcher (``kernel/hooks/dispatch.py``) in the task of the
client concerned.

Families (each spec is marked where it is defined with its family's decorator,
``@decision``, ``@notification``, ``@provider`` or ``@registration``; ``HOOK_FAMILIES``
and ``DECISION_HOOKS``... at the end of this module are derived from those marks):

* **decision** hooks (``auth_on_*``, ``on_auth``, ``on_deliver``) are called in plugin
  order; ``None`` means "no opinion, ask the next plugin"; the first real answer
  (:class:`Allow`, :class:`Deny`, :class:`AuthContinue`) wins and later plugins are not
  called. When nobody answers, the default policy decides: for ``auth_on_register`` the
  broker's ``allow_anonymous`` (refuse unless it is on); for ``auth_on_publish`` and
  ``auth_on_subscribe`` its ``no_match`` (``"allow"`` by default, or ``"deny"``). A raising or timed-out implementation counts
  as an error of its plugin and refuses the request.
* **notification** hooks (``on_*``) run every implementation; answers are ignored;
  errors and timeouts are logged and counted, and the next implementation still runs.
  Do slow work (network calls) in your own ``serve`` task fed by a bounded channel.
* **provider** hooks (``retain_*``, ``session_store_*``, ``message_store_*``, ``record_*``,
  ``store_commit``, ``cluster_forward``) are answered
  by the first implementation only: it provides the service. With no implementation the
  feature is off and the broker says so (for example CONNACK ``retain_available = 0``).
* **registration** hooks (``register_*``) are synchronous and collected when a plugin
  loads.

Hook deadlines are the broker's ``hook_timeout`` (decision and provider hooks) and
``notification_timeout`` settings, or a plugin's own ``hook_timeout``. A deadline can
only interrupt an ``async def`` implementation at an ``await``: a synchronous one runs
to its end, so keep synchronous hooks quick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from .hooks.dispatch import FAMILY_ATTRIBUTE, SYNCHRONOUS_HOOKS

if TYPE_CHECKING:
    from .admin import AdminRegistry
    from .hooks.registries import ApiRoutes, MetricsRegistry, SettingsRegistry
    from .values.info import NodeInfo, NodeMetrics, NodePlugins, SessionInfo
    from .values.types import Answer, ClientInfo, Message, SessionSnapshot, StoredMessage, TopicSubscription

PROJECT_NAME = "ternmq"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


_Spec = TypeVar("_Spec", bound=Callable[..., Any])


def _family(family: str, *, firstresult: bool) -> Callable[[_Spec], _Spec]:
    """A decorator that makes a function a hookspec of ``family``."""

    def mark(function: _Spec) -> _Spec:
        setattr(function, FAMILY_ATTRIBUTE, family)
        return hookspec(firstresult=firstresult)(function)

    mark.__name__ = mark.__qualname__ = family
    return mark


#: First answer wins, in plugin order (pluggy ``firstresult``).
decision = _family("decision", firstresult=True)
#: Every implementation runs; answers are ignored.
notification = _family("notification", firstresult=False)
#: The first implementation provides the service.
provider = _family("provider", firstresult=True)
#: Synchronous, called once when a plugin loads.
registration = _family("registration", firstresult=False)


# ------------------------------------------------------------------------------------
# decision hooks
# ------------------------------------------------------------------------------------


@decision
def auth_on_register(
    client: ClientInfo, password: bytes | None, clean_start: bool, properties: Mapping[str, Any]
) -> Answer | None:
    """Authenticate a client at CONNECT, before its session is attached.

    Fires: once per CONNECT (after enhanced authentication, if any), in the client's
    connection task. Skipped when ``allow_anonymous`` is on and no plugin implements it.

    :param client: the connecting client (client id as sent, or as assigned when empty).
    :param password: the password field, or ``None``.
    :param clean_start: MQTT 5 clean start / MQTT 3 clean session.
    :param properties: the CONNECT's MQTT 5 properties (empty for v3).

    Answer: ``allow(**modifiers)`` accepts. Modifiers: ``client_id``, ``username``,
    ``clean_start``, ``session_expiry_interval``, ``max_inflight_messages``,
    ``max_message_size`` (largest inbound packet), ``max_packet_size`` (largest outbound
    packet), ``max_queued_messages``, ``mountpoint`` (the client's topic namespace).
    ``deny(reason_code)`` refuses with that CONNACK code
    (v3 clients get the 3.1.1 return code that matches, as ``codec.connack_v3_code``
    maps it: 0x84 → 1, 0x85 → 2, 0x88/0x89/0x8B/0x9F → 3, 0x86/0x8C → 4, others → 5).

    First answer wins. Nobody answers: allowed with ``allow_anonymous``, else refused
    (v5 0x86, v3 return code 5, as VerneMQ). Error or timeout: refused. A client that
    closes its connection while the call waits cancels it (``trio.Cancelled`` at its
    ``await``); nothing is answered then.
    """


@decision
def auth_on_publish(client: ClientInfo, message: Message, is_will: bool) -> Answer | None:
    """Authorize a PUBLISH (also a will message at CONNECT, with ``is_will=True``).

    Fires: for every PUBLISH the client sends, before routing, in its connection task.

    :param client: the publisher.
    :param message: the message as received (topic already resolved from an alias).
    :param is_will: True when the message is the client's will, checked at CONNECT.

    Answer: ``allow(**modifiers)`` publishes; modifiers ``topic``, ``payload``, ``qos``,
    ``retain``, ``properties`` (a mapping merged over the message's). ``deny(code)``
    refuses: v5 clients get the code in PUBACK/PUBREC (QoS 0: dropped silently), MQTT
    3.1.1 publishers are disconnected, MQTT 3.1 publishers see the message dropped and
    acknowledged (VerneMQ's behaviour). A refused will refuses the CONNECT.

    First answer wins. Nobody answers: the broker's ``no_match`` decides (``"allow"``
    publishes, ``"deny"`` refuses with 0x87). Error or timeout: refused.
    """


@decision
def auth_on_subscribe(
    client: ClientInfo, subscriptions: Sequence[TopicSubscription], properties: Mapping[str, Any]
) -> Answer | None:
    """Authorize the topic filters of a SUBSCRIBE.

    Fires: once per SUBSCRIBE with all its filters, before anything is subscribed.

    :param client: the subscriber.
    :param subscriptions: the requested filters with their options, in packet order.
    :param properties: the SUBSCRIBE's MQTT 5 properties (subscription identifier, user
        properties).

    Answer: ``allow()`` grants every filter as asked; ``allow(topics=[...])`` replaces the
    list: each entry a :class:`TopicSubscription` (granted, possibly rewritten or
    downgraded) or a ``(topic_filter, reason_code)`` pair with a code ≥ 0x80 that refuses
    that one filter. ``deny(code)`` refuses every filter with that SUBACK code (v3: 0x80);
    the client stays connected.

    First answer wins. Nobody answers: the broker's ``no_match`` decides (``"allow"``
    grants as asked, ``"deny"`` refuses every filter with 0x87). Error or timeout: every
    filter refused.
    """


@decision
def auth_on_unsubscribe(
    client: ClientInfo, topic_filters: Sequence[str], properties: Mapping[str, Any]
) -> Answer | None:
    """Authorize (or rewrite) the topic filters of an UNSUBSCRIBE.

    Fires: once per UNSUBSCRIBE, before anything is unsubscribed.

    :param client: the client.
    :param topic_filters: the filters to remove, in packet order.
    :param properties: the UNSUBSCRIBE's MQTT 5 properties.

    Answer: ``allow()`` unsubscribes as asked; ``allow(topics=[...])`` replaces the list of
    filters (VerneMQ's ``on_unsubscribe`` rewrite). ``deny(code)`` keeps the
    subscriptions; v5 clients get ``code`` for every filter in UNSUBACK.

    First answer wins. Nobody answers: unsubscribed as asked (an unsubscribe only ever
    removes rights, so it is allowed even without ``allow_anonymous``). Error or
    timeout: refused.
    """


@decision
def on_auth(client: ClientInfo, method: str, data: bytes | None, reauthenticate: bool) -> Answer | None:
    """MQTT 5 enhanced authentication (CONNECT with an authentication method, AUTH).

    Fires: at CONNECT when the client sets ``authentication_method`` (before
    ``auth_on_register``), then for every AUTH packet the client sends, during CONNECT or
    later (re-authentication, ``reauthenticate=True``).

    :param client: the client.
    :param method: the authentication method; it never changes within a connection.
    :param data: the authentication data of this step.
    :param reauthenticate: True for a re-authentication of a connected client.

    Answer: ``auth_continue(data)`` sends AUTH 0x18 with ``data`` and waits for the next
    step; ``allow()`` (modifier ``authentication_data``) completes it (CONNACK success, or
    AUTH 0x00 on re-authentication); ``deny(code)`` refuses (CONNACK or DISCONNECT with
    ``code``, default 0x87).

    First answer wins. Nobody answers: refused with 0x8C (bad authentication method).
    Error or timeout: refused.
    """


@decision
def on_deliver(client: ClientInfo, message: Message) -> Answer | None:
    """Inspect or rewrite a message just before it is sent to one subscriber.

    Fires: once per delivery to an online subscriber, in the publisher's task (also
    for a message that then waits for a free in-flight slot), and for messages queued
    while the subscriber was offline when its session comes back, before they are sent.
    Costs nothing when no plugin implements it.

    :param client: the receiving client.
    :param message: the message as it will be delivered (QoS already downgraded).

    Answer: ``None`` or ``allow()`` delivers unchanged; ``allow(**modifiers)`` rewrites
    (modifiers ``topic``, ``payload``, ``properties``); ``deny()`` drops the message for
    this subscriber only (``on_message_drop`` fires with reason ``"denied"``).

    First answer wins. Nobody answers: delivered unchanged. Error or timeout: delivered
    unchanged (a broken plugin must not swallow messages).
    """


# ------------------------------------------------------------------------------------
# notification hooks
# ------------------------------------------------------------------------------------


@notification
def on_register(client: ClientInfo, properties: Mapping[str, Any]) -> None:
    """A client was accepted and its session attached, just before CONNACK is sent.

    :param client: the client, with any modifiers of ``auth_on_register`` applied.
    :param properties: the CONNACK's MQTT 5 properties as they will be sent.

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_publish(client: ClientInfo, message: Message) -> None:
    """A PUBLISH was authorized and routed.

    :param client: the publisher (for messages published through the broker's service
        API, a ClientInfo with the service's own client id).
    :param message: the message as routed (modifiers applied).

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_subscribe(client: ClientInfo, subscriptions: Sequence[TopicSubscription]) -> None:
    """A SUBSCRIBE was processed.

    :param client: the subscriber.
    :param subscriptions: the filters as granted; a refused filter appears with
        ``qos`` set to its reason code (≥ 0x80), as in VerneMQ's webhooks.

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_unsubscribe(client: ClientInfo, topic_filters: Sequence[str]) -> None:
    """An UNSUBSCRIBE was processed.

    :param client: the client.
    :param topic_filters: the filters that were asked to be removed (after rewriting).

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_client_wakeup(client: ClientInfo) -> None:
    """A client's session is online: attached to a connection and drained of its queue.

    :param client: the client.

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_client_offline(client: ClientInfo, reason: str) -> None:
    """A client with a persistent session disconnected; its session stays.

    :param client: the client.
    :param reason: why: ``"normal"`` (DISCONNECT), ``"taken_over"``, ``"keep_alive"``,
        ``"protocol_error"``, ``"connection_lost"``, ``"kicked"`` (admin or service API),
        ``"not_authorized"`` (a refused MQTT 3.1.1 publish or re-authentication),
        ``"listener_stopped"``, ``"shutdown"``.

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_client_gone(client: ClientInfo, reason: str) -> None:
    """A client with a non-persistent session disconnected; its session is gone.

    :param client: the client.
    :param reason: as for ``on_client_offline``.

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_offline_message(client_id: str, message: Message, mountpoint: str) -> None:
    """A message was queued for an offline persistent session.

    :param client_id: the session's client id.
    :param message: the message as queued (QoS already downgraded; its topic as the
        session's clients see it).
    :param mountpoint: the session's mountpoint (``""`` for none).

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_session_expired(client_id: str, mountpoint: str) -> None:
    """An offline session reached its expiry and was removed with its queue.

    :param client_id: the session's client id.
    :param mountpoint: the session's mountpoint (``""`` for none).

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_message_drop(client_id: str, message: Message, reason: str) -> None:
    """A message for one subscriber was dropped.

    :param client_id: the subscriber.
    :param message: the dropped message.
    :param reason: ``"queue_full"``, ``"expired"``, ``"max_packet_size_exceeded"``,
        ``"slow_consumer"`` or ``"denied"`` (by ``on_deliver``).

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_plugin_loaded(name: str) -> None:
    """A plugin (possibly the implementer itself) finished loading.

    :param name: the plugin's name.

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


@notification
def on_plugin_unloaded(name: str) -> None:
    """A plugin was unloaded (its hooks are gone and its tasks cancelled).

    :param name: the plugin's name.

    Every implementation runs; answers are ignored; errors and timeouts are counted.
    """


# ------------------------------------------------------------------------------------
# provider hooks
# ------------------------------------------------------------------------------------


@provider
def retain_store(message: Message) -> None:
    """Store ``message`` as the retained message of its topic, replacing any other.

    :param message: a retained message with a non-empty payload.

    Only the first implementation is called. None loaded: retained messages are
    unsupported (CONNACK ``retain_available = 0``; a retained PUBLISH is refused with
    0x9A). An error is logged and counted; the PUBLISH itself still succeeds.
    """


@provider
def retain_lookup(topic_filter: str) -> Sequence[Message]:
    """Return the retained messages whose topic matches ``topic_filter``.

    :param topic_filter: a plain (non-shared) topic filter; ``#`` lists everything except
        ``$``-topics, as MQTT matching says.

    Answer: the messages (expired ones may be included; the kernel skips them). Only the
    first implementation is called. Error or timeout: no retained messages delivered.
    """


@provider
def retain_delete(topic: str) -> None:
    """Remove the retained message of ``topic`` (an empty retained PUBLISH, or admin).

    :param topic: the exact topic.

    Only the first implementation is called. Errors are logged and counted.
    """


@provider
def session_store_load_all() -> Sequence[SessionSnapshot]:
    """Return every persistent session kept by the store, at broker start.

    Only the first implementation is called. None loaded: sessions live in memory only
    and do not survive a restart. Error or timeout: logged and counted; the broker starts
    without restored sessions.
    """


@provider
def session_store_save(session: SessionSnapshot) -> None:
    """Keep the current state of a persistent session.

    :param session: subscriptions, queued messages, expiry, mountpoint and the will
        still owed of the session (keep every field: a session restored without its
        mountpoint routes outside it). A store with per-message hooks keeps the messages
        from those and may ignore ``queued`` here.

    Fires: when a persistent session connects with a will, subscribes or unsubscribes,
    goes offline or has its delayed will published, and for every persistent session at
    shutdown. Only the first implementation is called; errors are logged and counted.
    """


@provider
def session_store_delete(client_id: str) -> None:
    """Forget a session: it was cleaned, expired or taken over with clean start; also
    before a session is saved for the first time (it replaces what the store kept under
    its client id).

    :param client_id: the session's client id; every message saved for it goes too.

    Only the first implementation is called; errors are logged and counted.
    """


@provider
def session_store_take(client_id: str, forget: bool) -> SessionSnapshot | None:
    """Take the session another node of the cluster kept for ``client_id``: that node is
    down, and the client connected here.

    :param client_id: the client id whose session to take.
    :param forget: the client connected with clean start: forget the session instead,
        in the same step (a save of this node's new session may be on its way: it must
        not be the one forgotten).

    Answer: the session with its messages (as ``session_store_load_all`` gives them), kept
    from now on as this node's (the node that kept it does not load it at its start);
    None when no other node's session of the client is stored, or with ``forget``. For
    stores that several nodes share (the built-in ``redis_store``); a store of one node
    has nothing to take and need not implement it. Only the first implementation is
    called. Error or timeout: the client starts a new session.
    """


@provider
def message_store_save(client_id: str, entry: StoredMessage) -> None:
    """Keep one message of a stored persistent session, or its new state.

    :param client_id: the session's client id.
    :param entry: the message and where it is (queued, in flight, released, or a QoS 2
        PUBLISH received from the client); an entry saved again under the same
        ``entry_id`` replaces the earlier one.

    Fires: when a QoS 1/2 message is queued for the session or goes in flight, when
    PUBREC releases it, when the client's QoS 2 PUBLISH is routed. **Synchronous** and on
    the delivery path: hand the write to a writer task; :func:`store_commit` waits for
    it. Only the first implementation is called; errors are logged and counted.
    """


@provider
def message_store_delete(client_id: str, entry_id: int) -> None:
    """Forget one message of a stored session: acknowledged, released or dropped.

    :param client_id: the session's client id.
    :param entry_id: the entry's id (a StoredMessage's ``entry_id``).

    **Synchronous**, as :func:`message_store_save`. Only the first implementation is
    called; errors are logged and counted.
    """


@provider
def store_commit() -> None:
    """Return once every write handed to the store so far is durable.

    Fires: before the broker acknowledges a QoS 1/2 PUBLISH (PUBACK, PUBREC) whose
    message it saved for a persistent session, so what was acknowledged survives a
    crash; and at shutdown. Only the first implementation is called. Error or timeout:
    logged and counted; the message is not acknowledged as written (MQTT 5 publishers get
    0x80, MQTT 3 ones are disconnected without an acknowledgement and send it again).
    """


@provider
def record_load(namespace: str) -> Mapping[str, bytes]:
    """Return every record kept under ``namespace`` (key -> value).

    :param namespace: whose records (a plugin's name: ``retainer``, ``banned``...).

    Plugins reach records through the service face (``Service.load_records``). Only the
    first implementation is called. Error or timeout: logged and counted, and the
    caller sees no records.
    """


@provider
def record_save(namespace: str, key: str, value: bytes) -> None:
    """Keep one record of a plugin (a retained message, an API key, a ban...).

    :param namespace: whose record.
    :param key: its key within the namespace, replacing an earlier value.
    :param value: the bytes to keep.

    **Synchronous**: hand the write to a writer task (:func:`store_commit` waits for it).
    Only the first implementation is called; errors are logged and counted.
    """


@provider
def record_delete(namespace: str, key: str) -> None:
    """Forget one record of a plugin.

    :param namespace: whose record.
    :param key: its key.

    **Synchronous**, as :func:`record_save`. Only the first implementation is called;
    errors are logged and counted.
    """


@provider
def cluster_forward(message: Message, origin: ClientInfo) -> None:
    """Offer a locally routed message to other nodes (the seam for a cluster plugin).

    :param message: the message after local routing.
    :param origin: the publisher.

    **Synchronous** and on the publishing path (once per routed message): queue the
    message for a task. Only the first implementation is called; none loaded means a
    single node. Errors are logged and counted; local delivery is not affected.
    """


@provider
def cluster_register(client: ClientInfo, clean_start: bool) -> SessionSnapshot | None:
    """Claim ``client``'s client id for this node across the cluster, at CONNECT.

    :param client: the connecting client, authenticated (``auth_on_register`` answered).
    :param clean_start: MQTT 5 clean start / MQTT 3 clean session.

    Fires: once per accepted CONNECT, before the session is attached; with clean start
    only while no plugin implements :func:`cluster_claim`. A node that held the client id
    ends its session there (``Service.hand_over``: its connection gets DISCONNECT 0x8E)
    and a persistent one is the answer: the session, with its messages, which this node
    resumes (CONNACK session present) unless ``clean_start``. None: no session elsewhere.
    Only the first implementation is called; none loaded means a single node. Error or
    timeout: logged and counted, and the client connects as on a single node.
    """


@provider
def cluster_claim(client: ClientInfo) -> None:
    """Claim ``client``'s client id for this node across the cluster, at a clean-start
    CONNECT (there is no session to resume, so the CONNECT does not wait).

    :param client: the connecting client, authenticated (``auth_on_register`` answered).

    Fires: once per accepted CONNECT with clean start (MQTT 5 clean start, MQTT 3 clean
    session), before the session is attached; CONNECTs without clean start go to
    :func:`cluster_register`. **Synchronous** and on the connect path: hand the claim to
    a task. The node that held the client id ends its session there; of two CONNECTs of
    one client id on two nodes the later one is kept. Only the first implementation is
    called; errors are logged and counted.
    """


@provider
def cluster_shared_here(group: str, topic_filter: str, message: Message) -> bool:
    """Whether this node delivers ``message`` to shared subscription ``group``.

    :param group: the group's name (``$share/GROUP/...``).
    :param topic_filter: the group's filter, as routed (under a mountpoint).
    :param message: the message being routed, published on this node.

    Fires: for each shared group with members on this node that a message published
    here matches, before one member is chosen. True: a member here gets it; False:
    another node's member does (the plugin forwards it there). **Synchronous**, on the
    delivery path. Only the first implementation is called; none loaded (a single node):
    always here. Error: logged and counted, and treated as False.
    """


@provider
def cluster_sessions() -> Sequence[SessionInfo]:
    """Return the sessions of every other node of the cluster (``session show``).

    Answer: ``SessionInfo`` values, each with its ``node``. Only the first implementation
    is called; none loaded means a single node (no others). Error or timeout: logged and
    counted, and only this node's sessions are shown.
    """


@provider
def cluster_disconnect(client_id: str, cleanup: bool) -> bool:
    """Disconnect a client held by another node of the cluster (``session disconnect``).

    :param client_id: the client id, which has no session on this node.
    :param cleanup: also end its session.

    Answer: True when a node had a session of it. Only the first implementation is
    called; none loaded: False. Error or timeout: logged and counted, and False.
    """


@provider
def cluster_leave(node: str) -> int:
    """Remove ``node``, a node of the cluster that is down, from the cluster (``cluster
    leave``): this node takes over the sessions it held, and it is no longer listed.

    :param node: the name of a node that is down (the broker checked: not this node, and
        not a running one).

    Answer: how many sessions this node took over (from a store the nodes share:
    ``Service.take_stored_session``, then ``Service.restore_session``). Only the first
    implementation is called. Error or timeout: logged and counted, and ``cluster
    leave`` fails.
    """


@provider
def cluster_nodes() -> Sequence[NodeInfo]:
    """Return every node of the cluster, this one included, and whether it runs.

    Answer: ``NodeInfo(name, running)`` values (``cluster show``, EMQX's ``/nodes``).
    Only the first implementation is called; none loaded means a single node (this one,
    running). Error or timeout: logged and counted, and this node alone is shown.
    """


@provider
def cluster_plugins(internal: bool) -> Sequence[NodePlugins]:
    """Return the plugins of every other node of the cluster (``plugin show``).

    :param internal: also the essential built-in plugins (``admin``), as
        ``Service.plugins(internal=True)`` lists them.

    Answer: a ``NodePlugins(node, plugins)`` per other node that answered. Only the first
    implementation is called; none loaded means a single node (no others). Error or
    timeout: logged and counted, and only this node's plugins are shown.
    """


@provider
def cluster_metrics() -> Sequence[NodeMetrics]:
    """Return the metrics of every other node of the cluster, read now (``metrics show``).

    Answer: a ``NodeMetrics(node, metrics)`` per other node that answered, each metric a
    ``MetricReading``. Only the first implementation is called; none loaded means a single
    node (no others). Error or timeout: logged and counted, and only this node's metrics
    are shown.
    """


# ------------------------------------------------------------------------------------
# registration hooks (synchronous, collected when a plugin loads)
# ------------------------------------------------------------------------------------


@registration
def register_admin_commands(registry: AdminRegistry) -> None:
    """Add commands to the admin command tree (``ternmq-admin``, ``/api/v1``).

    :param registry: the command registry; call ``registry.add(path, function, ...)``.

    Synchronous; called once when the plugin loads. An error is logged and the plugin
    still loads.
    """


@registration
def register_api_routes(routes: ApiRoutes) -> None:
    """Add HTTP routes to the management API (served while the ``api`` plugin is loaded).

    :param routes: the route registry; ``routes.add(rule, handler, methods=("GET",),
        scope="mgmt")``: ``await handler()`` answers the exact path ``rule`` behind an API
        key of ``scope``, reading the request from ``quart.request`` and returning what a
        quart view returns (a dict is JSON). The API's own paths (``/api/v1/``,
        ``/metrics``, ``/health``, ``/status``, ``/restmqtt/``) are refused (ValueError).

    Synchronous; called once when the plugin loads; its routes go when it unloads. An
    error is logged and the plugin still loads.
    """


@registration
def register_metrics(registry: MetricsRegistry) -> None:
    """Add metrics to the broker's metrics registry.

    :param registry: the metrics registry.

    Synchronous; called once when the plugin loads. An error is logged and the plugin
    still loads.
    """


@registration
def register_config(settings: SettingsRegistry) -> None:
    """Declare live settings of the plugin for ``show``/``set``.

    :param settings: the settings registry.

    Synchronous; called once when the plugin loads. An error is logged and the plugin
    still loads.
    """


# ------------------------------------------------------------------------------------
# the families, from the marks above (definition order)
# ------------------------------------------------------------------------------------

#: Hook name -> family name, for every hookspec of this module.
HOOK_FAMILIES: dict[str, str] = {
    name: getattr(value, FAMILY_ATTRIBUTE)
    for name, value in list(globals().items())
    if callable(value) and isinstance(getattr(value, FAMILY_ATTRIBUTE, None), str)
}


def _hooks_of(family: str) -> tuple[str, ...]:
    return tuple(name for name, marked in HOOK_FAMILIES.items() if marked == family)


DECISION_HOOKS = _hooks_of("decision")
assert set(SYNCHRONOUS_HOOKS) <= set(HOOK_FAMILIES), "SYNCHRONOUS_HOOKS names a hook with no spec"
NOTIFICATION_HOOKS = _hooks_of("notification")
PROVIDER_HOOKS = _hooks_of("provider")
REGISTRATION_HOOKS = _hooks_of("registration")
