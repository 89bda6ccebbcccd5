"""The admin commands of retained messages: show and delete."""

from __future__ import annotations

from ternmq.kernel import AdminRegistry, Arguments, CommandError, Message, Service, Table, Text, TopicError


def _retain_topic(args: Arguments, default: str | None) -> str:
    """The ``--topic`` of the retain commands: a topic, or a filter with ``+``/``#``."""
    topic = args.text_flag("topic", default)
    if not topic:
        raise args.usage_error("--topic is required: --topic=<topic>, or a filter such as --topic='sensors/#'")
    if topic.startswith("$share/"):
        raise args.usage_error(f"--topic={topic}: a topic or topic filter, not a shared subscription")
    return topic


async def _retained(service: Service, args: Arguments, topic_filter: str) -> tuple[Message, ...]:
    """The retained messages matching ``topic_filter``, by topic (expired ones left out).
    A bad filter is named first, then a missing retainer."""
    try:
        messages = await service.retained(topic_filter)
    except TopicError as exc:
        raise args.usage_error(f"--topic={topic_filter}: {exc}") from None
    if not service.retain_available:
        raise CommandError("no retainer plugin is loaded")
    return messages


async def _retain_show(service: Service, args: Arguments) -> Table:
    topic = _retain_topic(args, "#")
    limit = args.int_flag("limit", 100, minimum=1)
    named = [column for column in ("payload", "qos") if args.bool_flag(column)]
    columns = ("topic", *named) if named else ("topic", "payload", "qos")
    rows = [
        {"topic": m.topic, "payload": m.payload.decode("utf-8", "replace"), "qos": m.qos}
        for m in (await _retained(service, args, topic))[:limit]
    ]
    return Table(tuple({c: row[c] for c in columns} for row in rows), columns)


async def _retain_delete(service: Service, args: Arguments) -> Text:
    topic = _retain_topic(args, None)
    # A filter deletes every retained message it matches (as EMQX's retainer clean does);
    # the answer says how many, so that a typo shows as "No retained message".
    messages = await _retained(service, args, topic)
    for message in messages:
        await service.delete_retained(message.topic)
    where = f"matching {topic}" if "+" in topic or "#" in topic else f"on {topic}"
    if not messages:
        return Text(f"No retained message {where}")
    count = len(messages)
    return Text(f"Deleted {count} retained message{'' if count == 1 else 's'} {where}")


def register(registry: AdminRegistry) -> None:
    registry.describe("retain", "Show and delete retained messages.")
    registry.add(
        "retain show",
        _retain_show,
        help="List retained messages.",
        flags={
            "topic": "a topic filter (default #)",
            "limit": "rows (default 100)",
            "payload": "show the payload column (naming columns shows only those, with the topic)",
            "qos": "show the qos column",
        },
    )
    registry.add(
        "retain delete",
        _retain_delete,
        help="Delete the retained message of a topic, or every one a filter matches.",
        flags={"topic": "a topic, or a filter with + or # (quote it for the shell)"},
    )
