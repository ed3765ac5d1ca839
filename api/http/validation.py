"""Reading and checking request input against JSON schemas, with clear one-line 400 errors."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
from aiohttp import web
from multidict import MultiMapping

from modelsieve.api.http.errors import api_error

MESSAGE_LIMIT = 200


@dataclass(frozen=True)
class Checker:
    """A JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) compiled for validation."""

    schema: Mapping[str, Any]
    validator: jsonschema_rs.Validator

    def check(self, instance: Any, where: str) -> None:
        """Raise a 400 naming where the first problem is, e.g. `body.urls[2]: 5 is not of type "string"`."""
        error = next(self.validator.iter_errors(instance), None)
        if error is None:
            return
        location = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.instance_path)
        if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
            noun = "parameter" if where == "query" else "field"
            allowed = ", ".join(sorted(self._node(error.schema_path[:-1]).get("properties", {})))
            message = f"unknown {noun} {', '.join(map(repr, sorted(error.kind.unexpected)))}; expected: {allowed}"
        else:
            message = error.message
        if len(message) > MESSAGE_LIMIT:
            message = message[:MESSAGE_LIMIT] + "…"
        raise api_error(400, f"{location}: {message}")

    def _node(self, path: Sequence[str | int]) -> Mapping[str, Any]:
        node: Any = self.schema
        for step in path:
            node = node[step]
        return node if isinstance(node, Mapping) else {}


def compile_schema(schema: dict[str, Any]) -> Checker:
    """A Checker for `schema` (a dict: jsonschema_rs refuses other mappings); the schema itself is
    checked against the draft's meta-schema first."""
    return Checker(schema, jsonschema_rs.Draft202012Validator(schema, validate_formats=True))


def query_values(query: MultiMapping[str], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters as a dict, numbers and booleans converted as the schema types them.

    A parameter given twice is an error (never silently take the first or the last).
    """
    values: dict[str, Any] = {}
    properties = schema.get("properties", {})
    for name, raw in query.items():
        if name in values:
            raise api_error(400, f"query.{name}: given more than once")
        values[name] = _convert(raw, properties.get(name, {}).get("type"))
    return values


def _convert(raw: str, kind: str | None) -> Any:
    try:
        if kind == "integer":
            return int(raw, 10)
        if kind == "number":
            return float(raw)
    except ValueError:
        return raw  # left as a string: the schema check then says what type was expected
    if kind == "boolean" and raw in ("true", "false"):
        return raw == "true"
    return raw


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise api_error(413, f"request body of {request.content_length} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise api_error(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def json_bytes(request: web.Request, limit: int) -> bytes:
    """The raw bytes of a JSON request body (415 for another media type, 413 past `limit`)."""
    if request.content_type not in ("application/json", "application/octet-stream") and request.body_exists:
        raise api_error(415, f"expected a JSON body (Content-Type: application/json), got {request.content_type}")
    return await read_body(request, limit)


def check_raw_body(request: web.Request, media_type: str) -> None:
    """415 for a form upload where the raw bytes belong: hashing a multipart envelope would give
    the digests of the envelope and a `none` verdict that says nothing about the file."""
    if request.content_type.startswith("multipart/"):
        raise api_error(
            415,
            f"expected the raw bytes as the body (Content-Type: {media_type}), got a {request.content_type} form: "
            "with curl, --data-binary @FILE rather than -F",
        )


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN / Infinity), or a 400 saying where it is malformed."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise api_error(400, "body: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise api_error(400, f"body: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise api_error(400, f"body: {exc}") from None
    except RecursionError:
        raise api_error(400, "body: JSON nested too deeply") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
