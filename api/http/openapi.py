"""The OpenAPI 3.1 document, generated from the same route table and schemas that validate requests."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from modelsieve.api.http.auth import ANY_SCOPE, SCOPE_HELP
from modelsieve.api.http.routing import Route
from modelsieve.api.http.schemas import ERROR

DESCRIPTION = """\
Recognise known-harmful generative AI models by exact digests and fuzzy tensor fingerprints.
Every match carries its evidence (list entry, source, digest or similarity, score); a verdict of
"none" means that no list matched, never that a model is harmless.

Authenticate with `Authorization: Bearer KEY` (keys come from `modelsieve keys api create`).
Scopes: """ + "; ".join(f"`{scope}`: {text}" for scope, text in SCOPE_HELP.items()) + "."


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The document served at /v1/openapi.json."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelsieve", "version": version("modelsieve"), "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "an API key with the operation's scope"}},
            "schemas": {"Error": ERROR},
        },
    }


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id or route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": _parameters(route),
        "responses": _responses(route),
    }
    if route.description:
        operation["description"] = route.description
    if route.scope is None:
        operation["security"] = []
    else:
        operation["security"] = [{"apiKey": []}]
        needs = "any valid key" if route.scope == ANY_SCOPE else f"scope `{route.scope}`"
        operation["description"] = (route.description + "\n\n" if route.description else "") + f"Needs {needs}."
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
    elif route.stream_body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {route.stream_body: {"schema": {"type": "string", "format": "binary"}}},
        }
    return operation


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters = []
    for where, schema in (("path", route.path_params), ("query", route.query)):
        if schema is None:
            continue
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            parameters.append(
                {
                    "name": name,
                    "in": where,
                    "required": where == "path" or name in required,
                    "description": prop.get("description", ""),
                    "schema": {k: v for k, v in prop.items() if k != "description"},
                }
            )
    return parameters


def _responses(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, response in sorted(route.responses.items()):
        entry: dict[str, Any] = {"description": response.description}
        if response.schema is not None:
            entry["content"] = {response.media_type: {"schema": response.schema}}
        responses[str(status)] = entry
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    standard = {"400": "invalid input", "422": "input understood but unusable (e.g. not a model file)", "503": "timed out"}
    if route.scope is not None:
        standard |= {"401": "no or unknown API key", "403": "the key lacks the scope", "429": "rate limited (see Retry-After)"}
    if route.body is not None or route.stream_body is not None:
        standard |= {"413": "body too large", "415": "wrong media type"}
    for code, text in standard.items():
        responses.setdefault(code, {"description": text, **error})
    return responses
