"""What the protocol layer needs from the layers around it, as Protocol types.

The packet handlers (connect.py, inbound.py, subscriptions.py, negotiation.py) are
given a :class:`ClientConnection` and reach the broker as :class:`BrokerCore`: the
members they use, nothing else. transport/connection.py's Connection and broker.py's
Broker are the kernel's implementations; mypy checks that they fit, and tests may hand
the handlers plain objects instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..routing.session import AttachedConnection, Session

if TYPE_CHECKING:
    import trio

    from ..codec import Framer, Packet
    from ..hooks.dispatch import HookDispatcher
    from ..routing.lifecycle import SessionLifecycle
    from ..routing.publisher import Publisher
    from ..routing.router import Router
    from ..values.config import BrokerSettings, Config, ListenerConfig
    from ..values.counters import Counters, PacketCounts
    from ..values.types import ClientInfo
    from .throttle import Throttle

# How many bytes one read asks the socket for.
RECEIVE_SIZE = 65536


class BrokerCore(Protocol):
    """The broker as the protocol and transport layers see it."""

    @property
    def settings(self) -> BrokerSettings: ...

    @property
    def config(self) -> Config: ...

    @property
    def dispatcher(self) -> HookDispatcher: ...

    @property
    def router(self) -> Router: ...

    @property
    def lifecycle(self) -> SessionLifecycle: ...

    @property
    def metrics(self) -> Counters: ...

    @property
    def packet_counts(self) -> PacketCounts: ...

    @property
    def sessions(self) -> dict[str, Session]: ...

    @property
    def retain_available(self) -> bool: ...

    @property
    def publisher(self) -> Publisher: ...

    @property
    def sessions_restored(self) -> trio.Event: ...


class ConnectingClient(Protocol):
    """What negotiation.py reads and sets of a connection."""

    protocol_level: int
    keep_alive: int
    request_problem_information: bool
    client_receive_maximum: int
    client_maximum_packet_size: int
    outbound_alias_maximum: int
    server_receive_maximum: int
    max_topic_alias: int
    over_capacity: bool
    client_info: ClientInfo
    tls_common_name: str | None
    peer_host: str
    peer_port: int

    @property
    def listener(self) -> ListenerConfig: ...

    @property
    def framer(self) -> Framer: ...


class ClientConnection(ConnectingClient, AttachedConnection, Protocol):
    """What the packet handlers use of a client's connection: what negotiation and the
    routing layer use of it, and its MQTT state, where its replies go, its stream
    (enhanced authentication reads AUTH packets itself)."""

    connected: bool
    session_present: bool
    auth_method: str | None
    # The watchdog's time for this connection, and its PUBLISH rate limit (None: none).
    deadline: float
    throttle: Throttle | None
    throttle_wait: trio.CancelScope | None

    @property
    def broker(self) -> BrokerCore: ...

    @property
    def stream(self) -> trio.abc.Stream: ...

    @property
    def in_aliases(self) -> dict[int, str]:
        """Topic aliases the client set (MQTT 5)."""
        ...

    def send(self, packet: Packet) -> bool:
        """Queue a control packet; False if it is larger than the client accepts."""
        ...

    async def flush(self) -> None:
        """Send what is queued now (before the reader waits for an answer)."""

    async def receive_cancellable(self) -> bytes | bytearray:
        """Some bytes from the client (b"" once it closed); a cancel loses none."""
        ...

    def problem_information(self, reason_string: str | None) -> dict[str, Any]:
        """Properties carrying ``reason_string``, if the client asked for them."""
        ...

    def protocol_error(self, reason_code: int, message: str = "") -> None:
        """Close this connection for bad input, with the reason code where v5 allows."""
