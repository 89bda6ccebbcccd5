"""Unit tests of the protocol layer (kernel/protocol/): negotiation and the packet handlers.

The connection is a plain object satisfying ``ClientConnection`` (ports.py) whose
``write`` and ``send`` append to a list; where a broker is needed it is a small plain
object satisfying ``BrokerCore``, built from the kernel's real parts (HookDispatcher,
Router, Publisher, SessionLifecycle, Scheduler, Counters, BrokerSettings). No socket, no listener.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pluggy
import pytest
import trio
from standins import WrittenConnection

from ternmq.kernel import hookspecs
from ternmq.kernel.codec import (
    Connack,
    Connect,
    Disconnect,
    Framer,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from ternmq.kernel.hooks.dispatch import HookDispatcher
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.protocol import connect, inbound
from ternmq.kernel.protocol.negotiation import Refused, Terms, apply_register_answer, check_connect, settle
from ternmq.kernel.protocol.ports import BrokerCore, ClientConnection, ConnectingClient
from ternmq.kernel.routing.lifecycle import SessionLifecycle
from ternmq.kernel.routing.publisher import Publisher
from ternmq.kernel.routing.router import Router
from ternmq.kernel.routing.scheduler import Scheduler
from ternmq.kernel.routing.session import AttachedConnection, Session
from ternmq.kernel.values.config import BrokerSettings, Config, Limits, ListenerConfig
from ternmq.kernel.values.counters import Counters
from ternmq.kernel.values.types import (
    Answer,
    AuthContinue,
    ClientInfo,
    Message,
    TopicSubscription,
    allow,
    auth_continue,
    deny,
)

ANONYMOUS = BrokerSettings(allow_anonymous=True)

# ----------------------------------------------------------------------------- stand-ins


class FakeBroker:
    """The broker as the protocol layer sees it, made of the kernel's real parts."""

    def __init__(
        self, settings: BrokerSettings = ANONYMOUS, *plugins: tuple[str, object], retain_available: bool = True
    ) -> None:
        self._settings = settings
        self._config = Config(broker=settings)
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        self._dispatcher = HookDispatcher(pm)
        for name, plugin in plugins:
            pm.register(plugin, name=name)
        self._dispatcher.rebuild()
        self._sessions: dict[str, Session] = {}
        self._router = Router(self._sessions, self._dispatcher)
        self._metrics = Counters()
        self._publisher = RecordingPublisher(self._router, self._dispatcher, settings.node_name)
        self._lifecycle = SessionLifecycle(
            self._sessions, self._router, self._dispatcher, Scheduler(), self._metrics, self._publisher
        )
        self._retain_available = retain_available

    @property
    def published(self) -> list[Message]:
        return self._publisher.published

    @property
    def settings(self) -> BrokerSettings:
        return self._settings

    @property
    def config(self) -> Config:
        return self._config

    @property
    def dispatcher(self) -> HookDispatcher:
        return self._dispatcher

    @property
    def router(self) -> Router:
        return self._router

    @property
    def lifecycle(self) -> SessionLifecycle:
        return self._lifecycle

    @property
    def metrics(self) -> Counters:
        return self._metrics

    @property
    def sessions(self) -> dict[str, Session]:
        return self._sessions

    @property
    def retain_available(self) -> bool:
        return self._retain_available

    @property
    def publisher(self) -> Publisher:
        return self._publisher


class RecordingPublisher(Publisher):
    """The kernel's publish path, keeping what it was given (``published``)."""

    def __init__(self, router: Router, dispatcher: HookDispatcher, node_name: str) -> None:
        super().__init__(router, dispatcher, node_name)
        self.published: list[Message] = []

    async def publish(
        self,
        message: Message,
        conn: AttachedConnection | None,
        origin: ClientInfo | None = None,
        on_matched: Callable[[int], None] | None = None,
    ) -> int:
        self.published.append(message)
        return await super().publish(message, conn, origin, on_matched)


class FakeClient(WrittenConnection):
    """A client's connection: ``write`` appends bytes, ``send`` encodes and writes."""

    def __init__(
        self,
        broker: FakeBroker | None = None,
        *,
        listener: ListenerConfig | None = None,
        tls_common_name: str | None = None,
    ) -> None:
        self._broker = broker if broker is not None else FakeBroker()
        limits = self._broker.settings.limits
        super().__init__(ClientInfo(""), 4, listener=listener, outbound_limit=limits.outbound_buffer_bytes)
        self._framer = Framer(limits.max_packet_size)
        self._in_aliases: dict[int, str] = {}
        self.keep_alive = 0
        self.request_problem_information = True
        self.server_receive_maximum = limits.max_inflight
        self.max_topic_alias = limits.max_topic_alias
        self.over_capacity = False
        self.throttle = None
        self.throttle_wait = None
        self.deadline = math.inf
        self.tls_common_name = tls_common_name
        self.disconnect_reason = "connection_lost"
        self.connected = False
        self.session_present = False
        self.auth_method: str | None = None
        self.sent: list[Any] = []
        self.errors: list[int] = []

    @property
    def framer(self) -> Framer:
        return self._framer

    @property
    def broker(self) -> BrokerCore:
        return self._broker

    @property
    def stream(self) -> trio.abc.Stream:
        raise AssertionError("a handler read the stream of a unit-test client")

    async def receive_cancellable(self) -> bytes:
        await trio.sleep_forever()  # a peer that stays and sends nothing
        raise AssertionError("unreachable")

    @property
    def in_aliases(self) -> dict[int, str]:
        return self._in_aliases

    def send(self, packet: Any) -> bool:
        self.sent.append(packet)
        self.write(encode(packet, self.protocol_level))
        return True

    async def flush(self) -> None:
        pass

    def problem_information(self, reason_string: str | None) -> dict[str, Any]:
        if reason_string and self.protocol_level == 5 and self.request_problem_information:
            return {"reason_string": reason_string}
        return {}

    def protocol_error(self, reason_code: int, message: str = "") -> None:
        self.errors.append(reason_code)
        self.disconnect_reason = "protocol_error"


def fits_the_ports(client: FakeClient, broker: FakeBroker) -> None:
    """mypy checks that the stand-ins satisfy the Protocol types they stand in for."""
    _connecting: ConnectingClient = client
    _client: ClientConnection = client
    _attached: AttachedConnection = client
    _broker: BrokerCore = broker


def connect_packet(level: int = 5, client_id: str = "c1", **kwargs: Any) -> Connect:
    return Connect(client_id=client_id, protocol_level=level, **kwargs)


def terms_of(
    packet: Connect, settings: BrokerSettings = ANONYMOUS, client: FakeClient | None = None
) -> tuple[FakeClient, Terms]:
    client = client if client is not None else FakeClient(FakeBroker(settings))
    return client, check_connect(client, packet, settings)


def refusal(
    packet: Connect, settings: BrokerSettings = ANONYMOUS, client: FakeClient | None = None
) -> pytest.ExceptionInfo[Refused]:
    with pytest.raises(Refused) as info:
        terms_of(packet, settings, client)
    return info


def limits(**kwargs: Any) -> BrokerSettings:
    return BrokerSettings(allow_anonymous=True, limits=Limits(**kwargs))


# ----------------------------------------------------------------------------- check_connect


def test_the_stand_ins_fit_the_ports() -> None:
    broker = FakeBroker()
    fits_the_ports(FakeClient(broker), broker)  # the real check is mypy's


def test_check_connect_takes_the_client_id_and_sets_the_client_info() -> None:
    client, terms = terms_of(connect_packet(5, "dev-1", username="alice", keep_alive=30))
    assert (terms.client_id, terms.username, terms.clean_start) == ("dev-1", "alice", True)
    assert client.client_info == ClientInfo("dev-1", "alice", "127.0.0.1", 50000, 5, "unit", "", ANONYMOUS.node_name)
    assert (client.protocol_level, client.keep_alive) == (5, 30)
    assert terms.connack == {}


def test_an_empty_client_id_with_clean_start_is_assigned_on_v5_and_announced() -> None:
    client, terms = terms_of(connect_packet(5, ""))
    assert terms.client_id.startswith("ternmq-") and len(terms.client_id) > len("ternmq-")
    assert terms.connack["assigned_client_identifier"] == terms.client_id
    assert client.client_info.client_id == terms.client_id


def test_assigned_client_ids_differ() -> None:
    assert terms_of(connect_packet(5, ""))[1].client_id != terms_of(connect_packet(5, ""))[1].client_id


def test_an_empty_client_id_on_v5_is_assigned_even_without_clean_start() -> None:
    _, terms = terms_of(connect_packet(5, "", clean_start=False))
    assert terms.client_id.startswith("ternmq-")


def test_an_empty_client_id_with_clean_session_is_assigned_on_v311_without_a_property() -> None:
    _, terms = terms_of(connect_packet(4, ""))
    assert terms.client_id.startswith("ternmq-")
    assert terms.connack == {}


def test_an_empty_client_id_without_clean_session_is_refused_on_v311() -> None:
    assert refusal(connect_packet(4, "", clean_start=False)).value.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID


@pytest.mark.parametrize("clean", [True, False])
def test_an_empty_client_id_is_refused_on_v31(clean: bool) -> None:
    info = refusal(connect_packet(3, "", clean_start=clean))
    assert info.value.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID and info.value.answered


@pytest.mark.parametrize("level", [3, 4, 5])
def test_a_client_id_longer_than_the_limit_is_refused(level: int) -> None:
    settings = limits(max_client_id_length=5)
    assert terms_of(connect_packet(level, "abcde"), settings)[1].client_id == "abcde"
    info = refusal(connect_packet(level, "abcdef"), settings)
    assert info.value.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID


@pytest.mark.parametrize("keep_alive", [61, 0])
def test_a_keep_alive_above_the_maximum_is_lowered_on_v5(keep_alive: int) -> None:
    client, terms = terms_of(connect_packet(5, keep_alive=keep_alive), limits(max_keep_alive=60))
    assert client.keep_alive == 60
    assert terms.connack["server_keep_alive"] == 60


def test_a_keep_alive_within_the_maximum_is_kept_without_a_property() -> None:
    client, terms = terms_of(connect_packet(5, keep_alive=60), limits(max_keep_alive=60))
    assert client.keep_alive == 60 and "server_keep_alive" not in terms.connack


def test_a_keep_alive_of_zero_is_fine_without_a_maximum() -> None:
    client, terms = terms_of(connect_packet(4, keep_alive=0))
    assert client.keep_alive == 0 and terms.connack == {}


@pytest.mark.parametrize("level", [3, 4])
@pytest.mark.parametrize("keep_alive", [61, 0])
def test_a_keep_alive_above_the_maximum_is_refused_on_v3(level: int, keep_alive: int) -> None:
    info = refusal(connect_packet(level, keep_alive=keep_alive), limits(max_keep_alive=60))
    assert info.value.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID and info.value.answered


def test_use_identity_as_username_takes_the_certificate_name() -> None:
    listener = ListenerConfig("tls", type="tls", use_identity_as_username=True)
    client = FakeClient(listener=listener, tls_common_name="device-cn")
    _, terms = terms_of(connect_packet(5, username="claimed"), client=client)
    assert terms.username == "device-cn"
    assert client.client_info.username == "device-cn" and client.client_info.tls_common_name == "device-cn"


def test_use_identity_as_username_without_a_certificate_is_refused() -> None:
    listener = ListenerConfig("tls", type="tls", use_identity_as_username=True)
    client = FakeClient(listener=listener)
    assert refusal(connect_packet(5, username="claimed"), client=client).value.reason_code == ReasonCode.NOT_AUTHORIZED


def test_a_certificate_name_is_not_the_username_unless_configured() -> None:
    client = FakeClient(tls_common_name="device-cn")
    _, terms = terms_of(connect_packet(5, username="claimed"), client=client)
    assert terms.username == "claimed"


def test_a_listener_over_capacity_refuses_with_server_busy() -> None:
    client = FakeClient()
    client.over_capacity = True
    assert refusal(connect_packet(5), client=client).value.reason_code == ReasonCode.SERVER_BUSY


def test_v5_connect_properties_set_the_client_limits() -> None:
    props = {
        "receive_maximum": 10,
        "maximum_packet_size": 2000,
        "topic_alias_maximum": 5,
        "request_problem_information": 0,
    }
    client, _ = terms_of(connect_packet(5, properties=props))
    assert client.client_receive_maximum == 10
    assert client.client_maximum_packet_size == 2000
    assert client.outbound_alias_maximum == 5
    assert client.request_problem_information is False


@pytest.mark.parametrize(("level", "answered"), [(5, True), (4, False), (3, False)])
def test_an_invalid_will_topic_is_refused_v3_without_an_answer(level: int, answered: bool) -> None:
    info = refusal(connect_packet(level, will=Will("a/+", b"gone")))
    assert info.value.reason_code == ReasonCode.TOPIC_NAME_INVALID
    assert info.value.answered is answered


def test_v5_session_expiry_comes_from_the_property() -> None:
    assert terms_of(connect_packet(5))[1].expiry == 0
    assert terms_of(connect_packet(5, properties={"session_expiry_interval": 300}))[1].expiry == 300


@pytest.mark.parametrize(
    ("clean", "persistent_session_expiry", "expected"),
    [(True, 0, 0), (False, 0, 0xFFFFFFFF), (False, 3600, 3600), (True, 3600, 0)],
)
def test_v3_session_expiry_comes_from_clean_session_and_the_configuration(
    clean: bool, persistent_session_expiry: int, expected: int
) -> None:
    settings = limits(persistent_session_expiry=persistent_session_expiry)
    assert terms_of(connect_packet(4, clean_start=clean), settings)[1].expiry == expected


def test_terms_take_the_configured_inflight_and_queue_limits() -> None:
    _, terms = terms_of(connect_packet(5), limits(max_inflight=7, max_queued_messages=9))
    assert (terms.max_inflight, terms.max_queued) == (7, 9)


# ----------------------------------------------------------------------------- settle


def settled(
    packet: Connect, settings: BrokerSettings = ANONYMOUS, *, retain_available: bool = True
) -> tuple[FakeClient, Terms]:
    client, terms = terms_of(packet, settings)
    apply_register_answer(client, terms, None, settings)
    settle(client, packet, terms, settings, retain_available=retain_available)
    return client, terms


def test_settle_caps_an_infinite_v5_session_expiry_and_announces_it() -> None:
    packet = connect_packet(5, properties={"session_expiry_interval": 0xFFFFFFFF})
    _, terms = settled(packet, limits(max_session_expiry=100))
    assert terms.expiry == 100 and terms.connack["session_expiry_interval"] == 100


def test_settle_caps_a_long_v5_session_expiry_but_keeps_a_short_one() -> None:
    long = connect_packet(5, properties={"session_expiry_interval": 101})
    assert settled(long, limits(max_session_expiry=100))[1].expiry == 100
    short = connect_packet(5, properties={"session_expiry_interval": 100})
    _, terms = settled(short, limits(max_session_expiry=100))
    assert terms.expiry == 100 and "session_expiry_interval" not in terms.connack


def test_settle_caps_a_persistent_v3_session() -> None:
    _, terms = settled(connect_packet(4, clean_start=False), limits(max_session_expiry=100))
    assert terms.expiry == 100 and terms.connack == {}


def test_without_a_cap_an_infinite_session_expiry_stays() -> None:
    packet = connect_packet(5, properties={"session_expiry_interval": 0xFFFFFFFF})
    assert settled(packet)[1].expiry == 0xFFFFFFFF


def test_v5_connack_properties() -> None:
    settings = limits(max_inflight=20, max_topic_alias=8, max_packet_size=4096)
    client, terms = settled(connect_packet(5), settings)
    assert terms.connack == {"receive_maximum": 20, "maximum_packet_size": 4096, "topic_alias_maximum": 8}
    assert client.server_receive_maximum == 20


def test_v5_connack_says_when_retain_is_not_available() -> None:
    _, terms = settled(connect_packet(5), retain_available=False)
    assert terms.connack["retain_available"] == 0


def test_v5_connack_gives_response_information_when_asked() -> None:
    _, terms = settled(connect_packet(5, "dev", properties={"request_response_information": 1}))
    assert terms.connack["response_information"] == "response/dev"
    assert "response_information" not in settled(connect_packet(5, "dev"))[1].connack


def test_a_v3_connect_gets_no_connack_properties() -> None:
    assert settled(connect_packet(4, properties={}), retain_available=False)[1].connack == {}


def test_a_connack_larger_than_the_client_accepts_is_refused_without_answer() -> None:
    packet = connect_packet(5, properties={"maximum_packet_size": 10})
    client, terms = terms_of(packet)
    with pytest.raises(Refused) as info:
        settle(client, packet, terms, ANONYMOUS, retain_available=True)
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE and info.value.answered is False


def test_a_connack_that_fits_the_clients_maximum_is_accepted() -> None:
    packet = connect_packet(5, properties={"maximum_packet_size": 100})
    settled(packet)  # no Refused


# ----------------------------------------------------------------------------- register answers


def registered(
    answer: object, settings: BrokerSettings = ANONYMOUS, packet: Connect | None = None
) -> tuple[FakeClient, Terms]:
    packet = packet if packet is not None else connect_packet(5, "c1", username="alice")
    client, terms = terms_of(packet, settings)
    apply_register_answer(client, terms, answer, settings)
    return client, terms


def register_refusal(answer: object, settings: BrokerSettings = ANONYMOUS, level: int = 5) -> Refused:
    with pytest.raises(Refused) as info:
        registered(answer, settings, connect_packet(level))
    return info.value


def test_no_answer_with_allow_anonymous_accepts() -> None:
    _, terms = registered(None)
    assert terms.client_id == "c1"


@pytest.mark.parametrize(("level", "code"), [(5, ReasonCode.BAD_USERNAME_OR_PASSWORD), (4, ReasonCode.NOT_AUTHORIZED)])
def test_no_answer_without_allow_anonymous_refuses(level: int, code: int) -> None:
    assert register_refusal(None, BrokerSettings(allow_anonymous=False), level).reason_code == code


def test_deny_refuses_with_its_code_and_reason() -> None:
    refused = register_refusal(deny(ReasonCode.BANNED, "go away"))
    assert (refused.reason_code, refused.reason_string, refused.answered) == (ReasonCode.BANNED, "go away", True)


def test_allow_without_modifiers_changes_nothing_even_without_allow_anonymous() -> None:
    client, terms = registered(allow(), BrokerSettings(allow_anonymous=False))
    assert (terms.client_id, terms.username, terms.connack) == ("c1", "alice", {})
    assert client.client_info.username == "alice"


def test_allow_modifiers_rewrite_the_terms_and_the_client_info() -> None:
    answer = allow(
        client_id="renamed",
        username="bob",
        clean_start=False,
        session_expiry_interval=120,
        max_inflight_messages=3,
        max_queued_messages=4,
        max_message_size=5000,
        max_packet_size=700,
    )
    client, terms = registered(answer)
    assert (terms.client_id, terms.username, terms.clean_start, terms.expiry) == ("renamed", "bob", False, 120)
    assert (terms.max_inflight, terms.max_queued) == (3, 4)
    assert terms.connack == {"session_expiry_interval": 120, "maximum_packet_size": 5000}
    assert client.framer.max_packet_size == 5000
    assert client.client_maximum_packet_size == 700
    assert (client.client_info.client_id, client.client_info.username) == ("renamed", "bob")


def test_the_max_packet_size_modifier_never_raises_the_clients_own_maximum() -> None:
    packet = connect_packet(5, properties={"maximum_packet_size": 500})
    client, _ = registered(allow(max_packet_size=9000), packet=packet)
    assert client.client_maximum_packet_size == 500


def test_a_username_modifier_of_none_removes_the_username() -> None:
    client, terms = registered(allow(username=None))
    assert terms.username is None and client.client_info.username is None


@pytest.mark.parametrize(("clean", "expected"), [(False, 0xFFFFFFFF), (True, 0)])
def test_a_clean_start_modifier_recomputes_a_v3_session_expiry(clean: bool, expected: int) -> None:
    packet = connect_packet(4, clean_start=not clean)
    _, terms = registered(allow(clean_start=clean), packet=packet)
    assert terms.clean_start is clean and terms.expiry == expected


def test_a_clean_start_modifier_keeps_a_v5_session_expiry() -> None:
    packet = connect_packet(5, properties={"session_expiry_interval": 30})
    _, terms = registered(allow(clean_start=False), packet=packet)
    assert terms.expiry == 30


def test_an_unknown_modifier_refuses_with_unspecified_error() -> None:
    refused = register_refusal(allow(client_id="x", colour="blue"))
    assert refused.reason_code == ReasonCode.UNSPECIFIED_ERROR


@pytest.mark.parametrize(
    "modifiers",
    [{"max_inflight_messages": "many"}, {"session_expiry_interval": None}, {"max_message_size": object()}],
)
def test_a_bad_modifier_value_refuses_with_unspecified_error(modifiers: dict[str, Any]) -> None:
    assert register_refusal(allow(**modifiers)).reason_code == ReasonCode.UNSPECIFIED_ERROR


def test_auth_continue_from_auth_on_register_is_a_plugin_error() -> None:
    answer: AuthContinue = auth_continue(b"more")
    assert register_refusal(answer).reason_code == ReasonCode.UNSPECIFIED_ERROR


# ----------------------------------------------------------------------------- the handshake


class RegisterPlugin:
    """``auth_on_register`` with a fixed answer."""

    def __init__(self, answer: Answer | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, bytes | None, bool]] = []

    @hookimpl
    def auth_on_register(
        self, client: ClientInfo, password: bytes | None, clean_start: bool, properties: dict[str, Any]
    ) -> Answer | None:
        self.asked.append((client.client_id, password, clean_start))
        return self.answer


async def test_handshake_now_answers_a_v311_connect_with_connack_0() -> None:
    client = FakeClient()
    packet = connect_packet(4)
    assert not connect.handshake_awaits(client, packet)
    assert connect.handshake_now(client, packet) is True
    assert client.written == [b"\x20\x02\x00\x00"]
    assert client.connected and client.session is client.broker.sessions["c1"]
    assert client.session.connection is client


async def test_handshake_answers_a_v5_connect_with_its_properties() -> None:
    client = FakeClient(FakeBroker(limits(max_inflight=20)))
    assert await connect.handshake(client, connect_packet(5, "")) is True
    [connack] = client.packets()
    assert isinstance(connack, Connack) and connack.reason_code == 0
    assert connack.properties["receive_maximum"] == 20
    assert connack.properties["assigned_client_identifier"] == client.client_info.client_id


async def test_a_refused_handshake_sends_the_reason_and_counts_it() -> None:
    broker = FakeBroker(ANONYMOUS, ("register", RegisterPlugin(deny(ReasonCode.BANNED, "banned here"))))
    client = FakeClient(broker)
    assert await connect.handshake(client, connect_packet(5, password=b"pw")) is False
    [connack] = client.packets()
    assert (connack.reason_code, connack.properties) == (ReasonCode.BANNED, {"reason_string": "banned here"})
    assert broker.metrics.connect_refused == 1 and client.disconnect_reason == "refused"
    assert not client.connected and broker.sessions == {}


async def test_a_refused_v311_handshake_gets_the_v3_return_code() -> None:
    client = FakeClient(FakeBroker(BrokerSettings(allow_anonymous=False)))
    assert await connect.handshake(client, connect_packet(4)) is False
    assert client.written == [b"\x20\x02\x00\x05"]  # 5: not authorized


async def test_a_connack_too_large_closes_without_an_answer() -> None:
    client = FakeClient()
    assert await connect.handshake(client, connect_packet(5, properties={"maximum_packet_size": 10})) is False
    assert client.written == []


async def test_auth_on_register_is_asked_with_the_password() -> None:
    plugin = RegisterPlugin(allow(client_id="renamed"))
    broker = FakeBroker(BrokerSettings(allow_anonymous=False), ("register", plugin))
    client = FakeClient(broker)
    assert await connect.handshake(client, connect_packet(5, "c1", password=b"secret")) is True
    assert plugin.asked == [("c1", b"secret", True)]
    assert list(broker.sessions) == ["renamed"]


async def test_a_second_connection_takes_the_session_over() -> None:
    broker = FakeBroker()
    first = FakeClient(broker)
    packet = connect_packet(5, "same", clean_start=False, properties={"session_expiry_interval": 60})
    assert await connect.handshake(first, packet) is True
    second = FakeClient(broker)
    assert await connect.handshake(second, packet) is True
    assert first.kicked == [(ReasonCode.SESSION_TAKEN_OVER, "taken_over")]
    [connack] = second.packets()
    assert connack.session_present is True and second.session_present
    assert broker.sessions["same"].connection is second


async def test_a_will_is_kept_on_the_connection_after_the_handshake() -> None:
    client = FakeClient()
    packet = connect_packet(5, will=Will("last/words", b"bye", 1))
    assert await connect.handshake(client, packet) is True
    assert client.will is not None and (client.will.topic, client.will.payload) == ("last/words", b"bye")


async def test_a_will_to_sys_is_refused() -> None:
    client = FakeClient()
    assert await connect.handshake(client, connect_packet(5, will=Will("$SYS/x", b"bye"))) is False
    [connack] = client.packets()
    assert connack.reason_code == ReasonCode.NOT_AUTHORIZED


# ----------------------------------------------------------------------------- packet handlers


async def connected_client(broker: FakeBroker | None = None, level: int = 5, client_id: str = "c1") -> FakeClient:
    client = FakeClient(broker)
    packet = connect_packet(level, client_id, properties={"session_expiry_interval": 60} if level == 5 else {})
    assert await connect.handshake(client, packet) is True
    client.written.clear()
    client.sent.clear()
    return client


async def test_pingreq_is_answered_with_pingresp_bytes() -> None:
    client = await connected_client()
    assert await inbound.HANDLERS[Pingreq](client, Pingreq()) is None
    assert client.written == [b"\xd0\x00"]
    assert client.packets() == [Pingresp()]


async def test_disconnect_with_will_keeps_the_will() -> None:
    client = await connected_client()
    client.will = Message("last/words", b"bye")
    assert (
        await inbound.HANDLERS[Disconnect](client, Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)) is inbound.STOP
    )
    assert client.will is not None
    assert client.disconnect_reason == "normal"


async def test_a_normal_disconnect_drops_the_will() -> None:
    client = await connected_client()
    client.will = Message("last/words", b"bye")
    assert await inbound.HANDLERS[Disconnect](client, Disconnect(0)) is inbound.STOP
    assert client.will is None
    assert client.disconnect_reason == "normal"


async def test_disconnect_may_change_the_session_expiry() -> None:
    client = await connected_client()
    await inbound.on_disconnect(client, Disconnect(0, {"session_expiry_interval": 0xFFFFFFFF}))
    assert client.session is not None and client.session.expiry_interval is None


async def test_disconnect_may_not_set_an_expiry_after_a_zero_one() -> None:
    client = FakeClient()
    assert await connect.handshake(client, connect_packet(5)) is True  # expiry 0
    assert await inbound.on_disconnect(client, Disconnect(0, {"session_expiry_interval": 30})) is inbound.STOP
    assert client.errors == [ReasonCode.PROTOCOL_ERROR]
    assert client.session is not None and client.session.expiry_interval == 0


async def test_a_second_connect_is_a_protocol_error() -> None:
    client = await connected_client()
    assert await inbound.HANDLERS[Connect](client, connect_packet(5)) is inbound.STOP
    assert client.errors == [ReasonCode.PROTOCOL_ERROR]
    assert client.written == []


async def test_a_qos1_publish_is_routed_and_acknowledged() -> None:
    broker = FakeBroker()
    subscriber = await connected_client(broker, client_id="sub")
    assert subscriber.session is not None
    broker.router.subscribe(subscriber.session, TopicSubscription("t", 1))
    publisher = await connected_client(broker, client_id="pub")
    assert await inbound.on_publish(publisher, Publish("t", b"x", 1, packet_id=7)) is None
    assert publisher.packets() == [Puback(7, 0)]
    [delivered] = subscriber.packets()
    assert (delivered.topic, delivered.payload, delivered.qos) == ("t", b"x", 1)
    assert broker.metrics.publish_received == 1


async def test_a_v5_publish_nobody_receives_is_acknowledged_with_no_matching_subscribers() -> None:
    client = await connected_client()
    await inbound.on_publish(client, Publish("t", b"x", 1, packet_id=1))
    assert client.packets() == [Puback(1, ReasonCode.NO_MATCHING_SUBSCRIBERS)]


async def test_a_v311_publish_nobody_receives_is_acknowledged_with_success() -> None:
    client = await connected_client(level=4)
    await inbound.on_publish(client, Publish("t", b"x", 1, packet_id=1))
    assert client.packets() == [Puback(1, 0)]


async def test_a_publisher_subscribed_to_its_topic_gets_the_puback_first() -> None:
    client = await connected_client()
    assert client.session is not None
    client.broker.router.subscribe(client.session, TopicSubscription("t", 1))
    await inbound.on_publish(client, Publish("t", b"x", 1, packet_id=9))
    first, second = client.packets()
    assert first == Puback(9, 0)
    assert isinstance(second, Publish) and second.payload == b"x"


async def test_a_qos2_publish_is_routed_once_and_released_by_pubrel() -> None:
    broker = FakeBroker()
    client = await connected_client(broker)
    session = client.session
    assert session is not None
    await inbound.on_publish(client, Publish("t", b"x", 2, packet_id=3))
    await inbound.on_publish(client, Publish("t", b"x", 2, dup=True, packet_id=3))  # a resend
    assert len(broker.published) == 1
    assert session.incoming_qos2 == {3: 0}
    assert await inbound.on_pubrel(client, Pubrel(3)) is None
    assert session.incoming_qos2 == {}
    assert client.packets() == [
        Pubrec(3, ReasonCode.NO_MATCHING_SUBSCRIBERS),
        Pubrec(3, 0),
        Pubcomp(3),
    ]


async def test_a_pubrel_for_an_unknown_id_on_a_new_session_is_a_protocol_error() -> None:
    client = await connected_client()
    assert await inbound.on_pubrel(client, Pubrel(44)) is inbound.STOP
    assert client.errors == [ReasonCode.PROTOCOL_ERROR]


async def test_a_pubrel_for_an_unknown_id_on_a_resumed_session_gets_not_found() -> None:
    client = await connected_client()
    client.session_present = True
    assert await inbound.on_pubrel(client, Pubrel(44)) is None
    assert client.packets() == [Pubcomp(44, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)]


async def test_a_publish_to_sys_is_not_authorized_on_v5_and_not_routed() -> None:
    broker = FakeBroker()
    client = await connected_client(broker)
    await inbound.on_publish(client, Publish("$SYS/broker/x", b"x", 1, packet_id=2))
    reason = {"reason_string": "clients may not publish to $SYS or $mount"}  # problem information was not refused
    assert client.packets() == [Puback(2, ReasonCode.NOT_AUTHORIZED, reason)]
    assert broker.published == [] and broker.metrics.publish_denied == 1


async def test_a_retained_publish_without_retain_available_is_a_protocol_error() -> None:
    client = await connected_client(FakeBroker(retain_available=False))
    assert await inbound.on_publish(client, Publish("t", b"x", 0, retain=True)) is inbound.STOP
    assert client.errors == [ReasonCode.RETAIN_NOT_SUPPORTED]


async def test_a_publish_with_a_wildcard_topic_is_a_protocol_error() -> None:
    client = await connected_client()
    assert await inbound.on_publish(client, Publish("a/+", b"x", 0)) is inbound.STOP
    assert client.errors == [ReasonCode.TOPIC_NAME_INVALID]


async def test_a_topic_alias_is_set_and_then_used() -> None:
    broker = FakeBroker()
    client = await connected_client(broker)
    await inbound.on_publish(client, Publish("long/topic", b"1", 0, properties={"topic_alias": 1}))
    await inbound.on_publish(client, Publish("", b"2", 0, properties={"topic_alias": 1}))
    assert [(m.topic, m.payload, dict(m.properties)) for m in broker.published] == [
        ("long/topic", b"1", {}),
        ("long/topic", b"2", {}),
    ]


@pytest.mark.parametrize("alias", [0, 65])
async def test_a_topic_alias_out_of_range_is_a_protocol_error(alias: int) -> None:
    client = await connected_client()  # max_topic_alias 64 by default
    assert await inbound.on_publish(client, Publish("t", b"x", 0, properties={"topic_alias": alias})) is inbound.STOP
    assert client.errors == [ReasonCode.TOPIC_ALIAS_INVALID]


async def test_an_unknown_topic_alias_is_a_protocol_error() -> None:
    client = await connected_client()
    assert await inbound.on_publish(client, Publish("", b"x", 0, properties={"topic_alias": 3})) is inbound.STOP
    assert client.errors == [ReasonCode.PROTOCOL_ERROR]


async def test_a_denied_publish_from_a_v311_client_disconnects_it() -> None:
    settings = BrokerSettings(allow_anonymous=True, no_match="deny")
    client = await connected_client(FakeBroker(settings), level=4)
    assert await inbound.on_publish(client, Publish("t", b"x", 1, packet_id=1)) is inbound.STOP
    assert client.disconnect_reason == "not_authorized" and client.written == []


async def test_a_denied_publish_from_a_v5_client_gets_the_reason_code() -> None:
    settings = BrokerSettings(allow_anonymous=True, no_match="deny")
    broker = FakeBroker(settings)
    client = await connected_client(broker)
    assert await inbound.on_publish(client, Publish("t", b"x", 1, packet_id=1)) is None
    assert client.packets() == [Puback(1, ReasonCode.NOT_AUTHORIZED)]
    assert broker.published == []


async def test_a_puback_frees_the_window_and_drains_the_queue() -> None:
    broker = FakeBroker(limits(max_inflight=1))
    client = await connected_client(broker)
    session = client.session
    assert session is not None
    broker.router.subscribe(session, TopicSubscription("t", 1))
    await broker.router.route(Message("t", b"a", 1), None)
    await broker.router.route(Message("t", b"b", 1), None)
    assert [p.payload for p in client.packets()] == [b"a"]
    await inbound.on_puback(client, Puback(1))
    assert [p.payload for p in client.packets()] == [b"a", b"b"]
    assert not session.queue


async def test_pubrec_is_answered_with_pubrel_and_unknown_ids_with_not_found() -> None:
    broker = FakeBroker()
    client = await connected_client(broker)
    assert client.session is not None
    broker.router.subscribe(client.session, TopicSubscription("t", 2))
    await broker.router.route(Message("t", b"a", 2), None)
    client.written.clear()
    await inbound.on_pubrec(client, Pubrec(1))
    await inbound.on_pubrec(client, Pubrec(99))
    assert client.packets() == [Pubrel(1), Pubrel(99, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)]


async def test_subscribe_answers_suback_and_adds_to_the_router() -> None:
    broker = FakeBroker()
    client = await connected_client(broker)
    requests = [SubscriptionRequest("a/#", 1), SubscriptionRequest("a/+x", 0), SubscriptionRequest("b", 2)]
    await inbound.on_subscribe(client, Subscribe(5, requests))
    assert client.packets() == [Suback(5, [1, ReasonCode.TOPIC_FILTER_INVALID, 2])]
    assert client.session is not None and sorted(client.session.subscriptions) == ["a/#", "b"]
    assert await broker.router.route(Message("a/x", b"x", 1), None) == 1


async def test_no_local_on_a_shared_subscription_is_a_protocol_error() -> None:
    client = await connected_client()
    await inbound.on_subscribe(client, Subscribe(5, [SubscriptionRequest("$share/g/t", 1, no_local=True)]))
    assert client.errors == [ReasonCode.PROTOCOL_ERROR] and client.written == []


async def test_unsubscribe_answers_unsuback_with_a_code_per_filter() -> None:
    broker = FakeBroker()
    client = await connected_client(broker)
    assert client.session is not None
    broker.router.subscribe(client.session, TopicSubscription("a", 1))
    await inbound.on_unsubscribe(client, Unsubscribe(6, ["a", "never"]))
    assert client.packets() == [Unsuback(6, [0, ReasonCode.NO_SUBSCRIPTION_EXISTED])]
    assert await broker.router.route(Message("a", b"x", 1), None) == 0


def test_the_handler_table_dispatches_each_packet_type_to_its_handler() -> None:
    assert inbound.HANDLERS[Pingreq] is inbound.on_pingreq
    assert inbound.HANDLERS[Disconnect] is inbound.on_disconnect
    assert inbound.HANDLERS[Connect] is inbound.on_second_connect
