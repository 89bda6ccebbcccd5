"""The ternmq kernel: the public surface for plugin authors.

Import what you need from here::

    from ternmq.kernel import hookimpl, allow, deny, ClientInfo, Message

Everything else under ``ternmq.kernel`` is private to the broker. The testing helpers
(``open_broker``, ``MQTTTestClient``, ``registered``, ``test_config``) are loaded on first
use, so importing the kernel does not import pytest.
"""

from typing import Any

from .acting import Outcome
from .admin import AdminRegistry, Arguments, CommandError, option_error, parse_value
from .codec import Auth, SubscriptionRequest, Will
from .group_commit import GroupCommit
from .hooks.registries import RESERVED_API_PATHS, ApiRoute, ApiRoutes, Metric, label_text
from .hookspecs import hookimpl
from .plugin_lookup import PluginError
from .routing.topics import SubscriptionTrie, TopicError, topic_matches, validate_topic_filter, validate_topic_name
from .service import Service
from .values.config import BrokerSettings, ConfigError, ListenerConfig, build_attrs, check_mountpoint
from .values.files import file_stamp, read_json_list, set_aside_imported, write_atomically
from .values.info import ListenerInfo, MetricReading, NodeInfo, NodeMetrics, NodePlugins, PluginInfo, SessionInfo
from .values.output import Table, Text, cell_text
from .values.stored import (
    UNREADABLE,
    StoreError,
    entry_from_json,
    entry_to_json,
    message_from_bytes,
    message_from_json,
    message_to_bytes,
    message_to_json,
    properties_from_json,
    properties_to_json,
    sendable,
    session_from_json,
    session_to_json,
)
from .values.types import (
    Allow,
    AuthContinue,
    ClientInfo,
    Deny,
    Message,
    SessionSnapshot,
    StoredMessage,
    TopicSubscription,
    allow,
    auth_continue,
    deny,
)

__all__ = [
    "GroupCommit",
    "hookimpl",
    "StoreError",
    "UNREADABLE",
    "message_to_json",
    "properties_from_json",
    "properties_to_json",
    "sendable",
    "entry_to_json",
    "entry_from_json",
    "session_to_json",
    "session_from_json",
    "message_from_json",
    "message_to_bytes",
    "message_from_bytes",
    "Table",
    "Metric",
    "label_text",
    "ApiRoute",
    "ApiRoutes",
    "RESERVED_API_PATHS",
    "Text",
    "AdminRegistry",
    "Arguments",
    "CommandError",
    "cell_text",
    "option_error",
    "parse_value",
    "Auth",
    "SubscriptionRequest",
    "Will",
    "ConfigError",
    "BrokerSettings",
    "ListenerConfig",
    "build_attrs",
    "check_mountpoint",
    "write_atomically",
    "set_aside_imported",
    "read_json_list",
    "file_stamp",
    "Service",
    "Outcome",
    "SessionInfo",
    "NodeInfo",
    "NodePlugins",
    "NodeMetrics",
    "MetricReading",
    "ListenerInfo",
    "PluginInfo",
    "PluginError",
    "TopicError",
    "SubscriptionTrie",
    "topic_matches",
    "validate_topic_name",
    "validate_topic_filter",
    "Allow",
    "AuthContinue",
    "ClientInfo",
    "Deny",
    "Message",
    "SessionSnapshot",
    "StoredMessage",
    "TopicSubscription",
    "allow",
    "auth_continue",
    "deny",
    "open_broker",
    "MQTTTestClient",
    "registered",
    "test_config",
]

_TESTING = ("open_broker", "MQTTTestClient", "registered", "test_config")


def __getattr__(name: str) -> Any:
    if name in _TESTING:
        from . import testing

        return getattr(testing, name)
    raise AttributeError(f"module 'ternmq.kernel' has no attribute {name!r}")
