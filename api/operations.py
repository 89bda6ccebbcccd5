"""Operations of a REST dialect, each declared once with the JSON Schemas of its query,
body and answers: the same declaration routes the request, checks its query and body
(jsonschema) before the handler sees them, and writes the OpenAPI 3 document.

Schemas are OpenAPI 3.0's dialect of JSON Schema. Request schemas keep to what plain
JSON Schema means the same way (no ``nullable``), so that jsonschema checks exactly what
the document promises; answer schemas may say ``nullable``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import jsonschema
from quart import Response, request
from werkzeug.routing import PathConverter

Handler = Callable[..., Awaitable[Response]]
# {name} or {name*} (the rest of the path, slashes included: a topic).
_PARAMETER = re.compile(r"\{(\w+)(\*?)\}")


class RestOfPath(PathConverter):
    """The rest of a path, slashes included, like werkzeug's ``path``, and also control
    characters such as a newline (``path``'s ``.`` stops at one): a topic may hold them.
    Registered as ``rest`` on the app (``register_converters``)."""

    regex = "(?s:[^/].*?)"


def register_converters(app: Any) -> None:
    app.url_map.converters["rest"] = RestOfPath


class BadRequest(Exception):
    """A request that does not fit its operation's schemas (the dialect words the 400)."""


@attrs.frozen
class Operation:
    method: str
    path: str  # OpenAPI form: /clients/{clientid}; {topic*} takes the rest of the path
    handler: Handler
    summary: str
    tag: str
    query: Mapping[str, Any] = attrs.field(factory=dict)  # parameter name -> schema
    required_query: tuple[str, ...] = ()
    body: Mapping[str, Any] | None = None
    responses: Mapping[int, Any] = attrs.field(factory=dict)  # status -> schema (None: no body)
    access: str = "read"  # what a key's role must allow: read, write, publish or keys

    @property
    def route(self) -> str:
        """The path as quart routes it."""
        return _PARAMETER.sub(lambda m: f"<rest:{m[1]}>" if m[2] else f"<{m[1]}>", self.path)

    @property
    def openapi_path(self) -> str:
        return _PARAMETER.sub(lambda m: "{" + m[1] + "}", self.path)

    def path_parameters(self) -> list[str]:
        return [m[1] for m in _PARAMETER.finditer(self.path)]


def _coerce(name: str, schema: Mapping[str, Any], values: Sequence[str]) -> Any:
    """A query parameter's text as its schema's type; BadRequest if it is not one."""
    kind = schema.get("type")
    if kind == "array":
        return [_coerce(name, schema.get("items", {}), [value]) for value in values]
    value = values[-1]
    if kind == "integer":
        # 20 digits at most: more is no count or page, and int() refuses past 4300
        if not re.fullmatch(r"-?[0-9]{1,20}", value):
            raise BadRequest(f"{name} must be an integer, not {value[:40]!r}")
        return int(value)
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            raise BadRequest(f"{name} must be a number, not {value!r}") from None
    if kind == "boolean":
        if value not in ("true", "false"):
            raise BadRequest(f"{name} must be true or false, not {value!r}")
        return value == "true"
    return value


# JSON Schema counts 1.0 as an integer; a QoS of 1.0 must not reach the broker (MQTT's
# encoders take whole numbers), so here an integer is an int and never a float or a bool.
_STRICT_TYPES = jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)
)
_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # untyped in types-jsonschema
    jsonschema.Draft7Validator, type_checker=_STRICT_TYPES
)


def _check(instance: Any, schema: Mapping[str, Any], what: str) -> None:
    error = jsonschema.exceptions.best_match(_Validator(schema).iter_errors(instance))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path)
        raise BadRequest(f"{what}{' ' + where if where else ''}: {error.message}")


def query_of(operation: Operation) -> dict[str, Any]:
    """The request's query parameters the operation knows, each as its type; others are
    ignored. BadRequest for a bad or missing one."""
    values: dict[str, Any] = {}
    for name, schema in operation.query.items():
        given = request.args.getlist(name)
        if given:
            values[name] = _coerce(name, schema, given)
    missing = [name for name in operation.required_query if name not in values]
    if missing:
        raise BadRequest(f"the query parameter {missing[0]} is required")
    _check(values, {"type": "object", "properties": dict(operation.query)}, "query")
    return values


async def body_of(operation: Operation) -> Any:
    """The request's JSON body, checked against the operation's schema."""
    if operation.body is None:
        return None
    raw = await request.get_data(as_text=False)
    try:
        body = json.loads(raw)
        # JSON may escape lone surrogates ("\ud800"): text no topic or payload can be.
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise BadRequest("the body has text that is not Unicode (a lone surrogate)") from None
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    _check(body, operation.body, "body")
    return body


def openapi_document(
    operations: Sequence[Operation], *, title: str, version: str, server: str, description: str
) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``operations``, served under ``server``."""
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in operation.path_parameters()
        ]
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": name in operation.required_query,
                "schema": dict(schema),
                **({"style": "form", "explode": True} if schema.get("type") == "array" else {}),
            }
            for name, schema in operation.query.items()
        ]
        entry: dict[str, Any] = {
            "summary": operation.summary,
            "tags": [operation.tag],
            "operationId": f"{operation.method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', operation.openapi_path)}",
            "parameters": parameters,
            "responses": {
                str(status): (
                    {"description": _STATUS_TEXT.get(status, "")}
                    if schema is None
                    else {"description": _STATUS_TEXT.get(status, ""), "content": _contents(schema)}
                )
                for status, schema in operation.responses.items()
            },
        }
        if operation.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": dict(operation.body)}}}
        if operation.access == "none":
            entry["security"] = []
        elif operation.access == "keys":  # a logged-in user's token, never a key
            entry["security"] = [{"bearerAuth": []}]
        paths.setdefault(operation.openapi_path, {})[operation.method.lower()] = entry
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version, "description": description},
        "servers": [{"url": server}],
        "components": {
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "bearerAuth": {"type": "http", "scheme": "bearer"},
            }
        },
        "security": [{"basicAuth": []}],
        "paths": paths,
    }


# An answer of plain text; ``contents(...)`` an answer that may come in several types.
TEXT = {"x-contents": {"text/plain": {"type": "string"}}}


def contents(**by_type: Mapping[str, Any]) -> dict[str, Any]:
    """An answer schema per content type: ``contents(json={...}, text={...})``."""
    names = {"json": "application/json", "text": "text/plain"}
    return {"x-contents": {names[kind]: schema for kind, schema in by_type.items()}}


def _contents(schema: Mapping[str, Any]) -> dict[str, Any]:
    by_type = schema.get("x-contents", {"application/json": schema})
    return {content_type: {"schema": dict(one)} for content_type, one in by_type.items()}


_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    503: "Service Unavailable",
}
