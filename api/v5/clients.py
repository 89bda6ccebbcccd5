"""EMQX 5's clients, subscriptions, topics, retained messages and publish."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ternmq.kernel import Message, Service, SessionInfo, TopicError

from .. import model
from ..model import ClientQuery, SubscriptionQuery
from ..operations import Operation
from . import Call, answer, declare, fail, no_content
from . import schemas as s
from .bodies import (
    CLIENT_QUERY,
    client_body,
    message_of,
    page_body,
    paging,
    retained_body,
    subscription_body,
    subscription_of,
)

if TYPE_CHECKING:
    from .. import Plugin


def operations(plugin: Plugin, service: Service) -> list[Operation]:
    node = service.node_name

    async def list_clients(call: Call) -> Any:
        q = call.query
        query = ClientQuery(
            client_ids=tuple(q.get("clientid", ())),
            usernames=tuple(q.get("username", ())),
            ip_address=q.get("ip_address"),
            # an idle client is a connected one whose session is kept asleep: none here
            conn_state=q.get("conn_state"),
            clean_start=q.get("clean_start"),
            proto_ver=q.get("proto_ver"),
            node=q.get("node"),
            like_clientid=q.get("like_clientid"),
            like_username=q.get("like_username"),
            gte_created_at=q.get("gte_created_at"),
            lte_created_at=q.get("lte_created_at"),
            gte_connected_at=q.get("gte_connected_at"),
            lte_connected_at=q.get("lte_connected_at"),
        )
        fields = q.get("fields", "all")
        wanted = s.CLIENT_FIELDS if fields == "all" else tuple(f for f in fields.split(",") if f)
        unknown = [f for f in wanted if f not in s.CLIENT_FIELDS]
        if unknown:
            return fail(400, "INVALID_PARAMETER", f"unknown field {unknown[0]!r} in fields")

        def item(info: SessionInfo) -> dict[str, Any]:
            body = client_body(info)
            return {name: body[name] for name in wanted}

        # Every node's clients (each row's node says which), as EMQX lists them.
        page = model.clients(service, query, *paging(call), sessions=await service.all_sessions())
        return answer(page_body(page, item))

    def known(call: Call) -> SessionInfo | None:
        return service.session_info(call.params["clientid"])

    async def anywhere(call: Call) -> SessionInfo | None:
        """The client's session on this node, else on another node of the cluster."""
        client_id = call.params["clientid"]
        info = service.session_info(client_id)
        if info is None:
            info = next((info for info in await service.all_sessions() if info.client_id == client_id), None)
        return info

    def not_found(call: Call) -> Any:
        return fail(404, "CLIENTID_NOT_FOUND", f"no client {call.params['clientid']!r}")

    async def get_client(call: Call) -> Any:
        info = await anywhere(call)
        return not_found(call) if info is None else answer(client_body(info))

    async def kick_client(call: Call) -> Any:
        # On whichever node holds it.
        if not await service.disconnect_anywhere(call.params["clientid"], cleanup=True):
            return not_found(call)
        return no_content()

    async def kick_bulk(call: Call) -> Any:
        for client_id in call.body:
            await service.disconnect_anywhere(client_id, cleanup=True)
        return no_content()

    async def client_subscriptions(call: Call) -> Any:
        if known(call) is None:
            return not_found(call)
        client_id = call.params["clientid"]
        return answer([subscription_body(client_id, node, sub) for sub in service.subscriptions(client_id)])

    async def subscribe(call: Call, items: list[dict[str, Any]]) -> Any:
        client_id = call.params["clientid"]
        if known(call) is None:
            return not_found(call)
        wanted = [subscription_of(item) for item in items]
        try:
            await service.subscribe(client_id, wanted)
        except (TopicError, ValueError) as exc:
            return fail(400, "INVALID_PARAMETER", str(exc))
        return [subscription_body(client_id, node, sub) for sub in wanted]

    async def subscribe_one(call: Call) -> Any:
        done = await subscribe(call, [call.body])
        return done if not isinstance(done, list) else answer(done[0])

    async def subscribe_bulk(call: Call) -> Any:
        done = await subscribe(call, call.body)
        return done if not isinstance(done, list) else answer(done)

    async def unsubscribe(call: Call, topics: list[str]) -> Any:
        if await service.unsubscribe(call.params["clientid"], topics) is None:
            return not_found(call)
        return no_content()

    async def unsubscribe_one(call: Call) -> Any:
        return await unsubscribe(call, [call.body["topic"]])

    async def unsubscribe_bulk(call: Call) -> Any:
        return await unsubscribe(call, [item["topic"] for item in call.body])

    async def list_subscriptions(call: Call) -> Any:
        q = call.query
        if q.get("node", node) != node:
            return answer(page_body(model.paged([], *paging(call)), dict))
        query = SubscriptionQuery(
            q.get("clientid"), q.get("qos"), q.get("topic"), q.get("match_topic"), q.get("share_group")
        )
        page = model.subscriptions(service, query, *paging(call))

        def item(row: model.SubscriptionRow) -> dict[str, Any]:
            return {**subscription_body(row.client_id, row.node, row.subscription), "durable": False}

        return answer(page_body(page, item))

    async def list_topics(call: Call) -> Any:
        topic = call.query.get("topic")
        found = [t for t in model.routes(service) if topic is None or t == topic]
        if call.query.get("node", node) != node:
            found = []
        return answer(page_body(model.paged(found, *paging(call)), lambda t: {"topic": t, "node": node}))

    async def get_topic(call: Call) -> Any:
        topic = call.params["topic"]
        if topic not in model.routes(service):
            return fail(404, "TOPIC_NOT_FOUND", f"no route for {topic!r}")
        return answer([{"topic": topic, "node": node}])

    async def retained_messages(call: Call) -> Any:
        try:
            page = await model.retained(service, call.query.get("topic", "#"), *paging(call))
        except TopicError as exc:
            return fail(400, "BAD_REQUEST", str(exc))
        return answer(page_body(page, retained_body))

    async def clear_retained(call: Call) -> Any:
        for message in await service.retained("#"):
            await service.delete_retained(message.topic)
        return no_content()

    async def retained_one(topic: str) -> Message | None:
        try:
            found = await service.retained(topic)
        except TopicError:
            return None
        return next((m for m in found if m.topic == topic), None)

    async def get_retained(call: Call) -> Any:
        message = await retained_one(call.params["topic"])
        if message is None:
            return fail(404, "NOT_FOUND", f"no retained message on {call.params['topic']!r}")
        return answer(retained_body(message, payload=True))

    async def delete_retained(call: Call) -> Any:
        if await retained_one(call.params["topic"]) is None:
            return fail(404, "NOT_FOUND", f"no retained message on {call.params['topic']!r}")
        await service.delete_retained(call.params["topic"])
        return no_content()

    async def publish_one(item: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        message = message_of(item)
        if isinstance(message, str):
            return 400, {"code": "BAD_REQUEST", "message": message, "reason": message}
        try:
            count = await service.publish(
                message.topic, message.payload, message.qos, message.retain, message.properties
            )
        except TopicError as exc:
            return 400, {"code": "BAD_TOPIC", "message": str(exc), "reason": str(exc)}
        identifier = f"{int(time.time() * 1_000_000):X}"
        if count == 0:
            return 202, {"id": identifier, "reason_code": 16, "message": "no_matching_subscribers"}
        return 200, {"id": identifier}

    async def publish(call: Call) -> Any:
        status, body = await publish_one(call.body)
        return answer(body, status)

    async def publish_bulk(call: Call) -> Any:
        results = [await publish_one(item) for item in call.body]
        statuses = {status for status, _ in results}
        status = 200 if statuses <= {200, 202} and 200 in statuses else 400 if 400 in statuses else 202
        return answer([body for _, body in results], status)

    client_path = "/clients/{clientid}"
    return [
        declare(
            "GET",
            "/clients",
            list_clients,
            "List clients",
            "Clients",
            query=CLIENT_QUERY,
            responses={200: s.page_of(s.CLIENT)},
        ),
        declare("GET", client_path, get_client, "A client", "Clients", responses={200: s.CLIENT}),
        declare(
            "DELETE", client_path, kick_client, "Kick a client out (its session ends)", "Clients", responses={204: None}
        ),
        declare(
            "POST",
            "/clients/kickout/bulk",
            kick_bulk,
            "Kick several clients out",
            "Clients",
            body=s.array(s.STRING, minItems=1),
            responses={204: None},
        ),
        declare(
            "GET",
            client_path + "/subscriptions",
            client_subscriptions,
            "A client's subscriptions",
            "Clients",
            responses={200: s.array(s.SUBSCRIPTION)},
        ),
        declare(
            "POST",
            client_path + "/subscribe",
            subscribe_one,
            "Subscribe a client",
            "Clients",
            body=s.SUBSCRIBE,
            responses={200: s.SUBSCRIPTION},
        ),
        declare(
            "POST",
            client_path + "/subscribe/bulk",
            subscribe_bulk,
            "Subscribe a client to several filters",
            "Clients",
            body=s.array(s.SUBSCRIBE, minItems=1),
            responses={200: s.array(s.SUBSCRIPTION)},
        ),
        declare(
            "POST",
            client_path + "/unsubscribe",
            unsubscribe_one,
            "Unsubscribe a client",
            "Clients",
            body=s.UNSUBSCRIBE,
            responses={204: None},
        ),
        declare(
            "POST",
            client_path + "/unsubscribe/bulk",
            unsubscribe_bulk,
            "Unsubscribe a client from several filters",
            "Clients",
            body=s.array(s.UNSUBSCRIBE, minItems=1),
            responses={204: None},
        ),
        declare(
            "GET",
            "/subscriptions",
            list_subscriptions,
            "List subscriptions",
            "Subscriptions",
            query={
                **s.PAGING,
                "node": s.STRING,
                "clientid": s.STRING,
                "qos": s.QOS,
                "topic": s.STRING,
                "match_topic": s.STRING,
                "share_group": s.STRING,
            },
            responses={200: s.page_of(s.SUBSCRIPTION_ROW)},
        ),
        declare(
            "GET",
            "/topics",
            list_topics,
            "List topics (routes)",
            "Topics",
            query={**s.PAGING, "topic": s.STRING, "node": s.STRING},
            responses={200: s.page_of(s.TOPIC)},
        ),
        declare("GET", "/topics/{topic*}", get_topic, "A topic's routes", "Topics", responses={200: s.array(s.TOPIC)}),
        declare(
            "GET",
            "/mqtt/retainer/messages",
            retained_messages,
            "List retained messages",
            "Retainer",
            query={**s.PAGING, "topic": s.STRING},
            responses={200: s.page_of(s.RETAINED)},
        ),
        declare(
            "DELETE",
            "/mqtt/retainer/messages",
            clear_retained,
            "Delete every retained message",
            "Retainer",
            responses={204: None},
        ),
        declare(
            "GET",
            "/mqtt/retainer/message/{topic*}",
            get_retained,
            "A retained message",
            "Retainer",
            responses={200: s.RETAINED},
        ),
        declare(
            "DELETE",
            "/mqtt/retainer/message/{topic*}",
            delete_retained,
            "Delete a retained message",
            "Retainer",
            responses={204: None},
        ),
        declare(
            "POST",
            "/publish",
            publish,
            "Publish a message",
            "Publish",
            body=s.PUBLISH,
            responses={200: s.PUBLISHED, 202: s.PUBLISHED},
            access="publish",
        ),
        declare(
            "POST",
            "/publish/bulk",
            publish_bulk,
            "Publish several messages",
            "Publish",
            body=s.array(s.PUBLISH, minItems=1),
            # 400: a body that is not a list of messages, or a list with a bad one
            responses={
                200: s.array(s.PUBLISHED),
                202: s.array(s.PUBLISHED),
                400: {"anyOf": [s.ERROR, s.array(s.PUBLISHED)]},
            },
            access="publish",
        ),
    ]
