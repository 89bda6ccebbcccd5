"""The JSON Schemas of EMQX 5's REST API as ternmq serves it: what requests may carry
(checked before a handler runs) and what answers look like (the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from ..model import DEFAULT_LIMIT, MAX_LIMIT

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
NUMBER: Schema = {"type": "number"}
QOS: Schema = {"type": "integer", "enum": [0, 1, 2]}
TIME: Schema = {"type": "string", "format": "date-time"}


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


ERROR = obj({"code": STRING, "message": STRING, "reason": STRING}, ("code", "message"))
META = obj({"page": INTEGER, "limit": INTEGER, "count": INTEGER, "hasnext": BOOLEAN}, ("page", "limit", "hasnext"))


def page_of(item: Schema) -> Schema:
    return obj({"data": array(item), "meta": META}, ("data", "meta"))


PAGING: dict[str, Schema] = {
    "page": {"type": "integer", "minimum": 1, "default": 1},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}

CLIENT = obj(
    {
        "clientid": STRING,
        "username": nullable(STRING),
        "node": STRING,
        "ip_address": nullable(STRING),
        "port": nullable(INTEGER),
        "proto_name": STRING,
        "proto_ver": INTEGER,
        "keepalive": nullable(INTEGER),
        "clean_start": BOOLEAN,
        "expiry_interval": nullable(INTEGER),
        "connected": BOOLEAN,
        "connected_at": nullable(TIME),
        "created_at": TIME,
        "disconnected_at": nullable(TIME),
        "is_bridge": BOOLEAN,
        "is_expired": BOOLEAN,
        "mountpoint": nullable(STRING),
        "durable": BOOLEAN,
        "listener": nullable(STRING),
        "subscriptions_cnt": INTEGER,
        "subscriptions_max": STRING,
        "inflight_cnt": INTEGER,
        "inflight_max": INTEGER,
        "mqueue_len": INTEGER,
        "mqueue_max": INTEGER,
        "mqueue_dropped": INTEGER,
    }
)
CLIENT_FIELDS = tuple(CLIENT["properties"])

SUBSCRIBE = obj(
    {
        "topic": {"type": "string", "minLength": 1},
        "qos": QOS,
        "nl": {"type": "integer", "enum": [0, 1]},
        "rap": {"type": "integer", "enum": [0, 1]},
        "rh": {"type": "integer", "enum": [0, 1, 2]},
    },
    ("topic",),
)
UNSUBSCRIBE = obj({"topic": {"type": "string", "minLength": 1}}, ("topic",))
SUBSCRIPTION = obj(
    {"topic": STRING, "qos": INTEGER, "nl": INTEGER, "rap": INTEGER, "rh": INTEGER, "clientid": STRING, "node": STRING}
)
SUBSCRIPTION_ROW = obj({**SUBSCRIPTION["properties"], "durable": BOOLEAN})
TOPIC = obj({"topic": STRING, "node": STRING}, ("topic", "node"))

PUBLISH = obj(
    {
        "topic": {"type": "string", "minLength": 1},
        "payload": STRING,
        "qos": QOS,
        "retain": BOOLEAN,
        "payload_encoding": {"type": "string", "enum": ["plain", "base64"]},
        "clientid": STRING,
        "properties": obj(
            {
                "payload_format_indicator": {"type": "integer", "enum": [0, 1]},
                "message_expiry_interval": {"type": "integer", "minimum": 0, "maximum": 4294967295},
                "response_topic": {"type": "string", "minLength": 1},
                "correlation_data": STRING,
                "user_properties": {"type": "object", "additionalProperties": STRING},
                "content_type": STRING,
            },
            additionalProperties=False,
        ),
    },
    ("topic", "payload"),
)
PUBLISHED = obj({"id": STRING, "reason_code": INTEGER, "message": STRING})

RETAINED = obj(
    {
        "msgid": STRING,
        "topic": STRING,
        "qos": INTEGER,
        "publish_at": TIME,
        "from_clientid": nullable(STRING),
        "from_username": nullable(STRING),
        "payload": STRING,
    },
    ("msgid", "topic", "qos", "publish_at"),
)

PLUGIN = obj(
    {
        "name": STRING,
        "rel_vsn": STRING,
        "description": STRING,
        "running_status": array(obj({"node": STRING, "status": {"type": "string", "enum": ["running", "stopped"]}})),
    },
    ("name", "running_status"),
)
PLUGIN_CONFIG: Schema = {"type": "object"}

BAN_KINDS = ["clientid", "username", "peerhost", "clientid_re", "username_re", "peerhost_net"]
BAN = obj(
    {
        "as": {"type": "string", "enum": BAN_KINDS},
        "who": STRING,
        "by": STRING,
        "reason": STRING,
        "at": nullable(TIME),
        "until": nullable(STRING),
    },
    ("as", "who"),
)
NEW_BAN = obj(
    {
        "as": {"type": "string", "enum": BAN_KINDS},
        "who": {"type": "string", "minLength": 1},
        "by": STRING,
        "reason": STRING,
        "at": STRING,
        "until": STRING,
    },
    ("as", "who"),
)

ROLE: Schema = {"type": "string", "enum": ["administrator", "viewer", "publisher"]}
API_KEY = obj(
    {
        "name": STRING,
        "api_key": STRING,
        "api_secret": STRING,
        "desc": STRING,
        "enable": BOOLEAN,
        "expired_at": nullable(STRING),
        "expired": BOOLEAN,
        "created_at": TIME,
        "role": ROLE,
    },
    ("name", "api_key", "enable", "role"),
)
NEW_API_KEY = obj(
    {
        "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_.@-]+$"},
        "desc": STRING,
        "enable": BOOLEAN,
        "expired_at": STRING,
        "role": ROLE,
    },
    ("name",),
)
API_KEY_CHANGE = obj({"desc": STRING, "enable": BOOLEAN, "expired_at": STRING, "role": ROLE})
LOGIN = obj(
    {"username": {"type": "string", "minLength": 1}, "password": {"type": "string", "minLength": 1}},
    ("username", "password"),
)
TOKEN = obj({"token": STRING, "version": STRING, "license": obj({"edition": STRING})}, ("token",))

FIGURES: Schema = {"type": "object", "additionalProperties": NUMBER}
NODE = obj(
    {
        "node": STRING,
        "node_status": STRING,
        "version": STRING,
        "edition": STRING,
        "uptime": INTEGER,
        "connections": INTEGER,
        "live_connections": INTEGER,
        "role": STRING,
        "sys_path": STRING,
    },
    ("node", "node_status"),
)
LISTENER = obj(
    {
        "id": STRING,
        "type": STRING,
        "name": STRING,
        "bind": STRING,
        "running": BOOLEAN,
        "enable": BOOLEAN,
        "current_connections": INTEGER,
        "max_connections": INTEGER,
        "mountpoint": STRING,
    },
    ("id", "type", "name", "running"),
)
