"""JSON schemas (draft 2020-12) of what the API accepts and returns; OpenAPI embeds the same ones."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

# Hex lengths of each digest as written in lists: AutoV3 also as Civitai's 12-hex prefix.
DIGEST_HEX_LENGTHS: dict[str, tuple[int, ...]] = {
    "sha256": (64,),
    "blake3": (64,),
    "md5": (32,),
    "sha1": (40,),
    "crc32": (8,),
    "autov1": (8,),
    "autov2": (10,),
    "autov3": (12, 64),
}


def hex_digest(name: str) -> Schema:
    lengths = "|".join(f"[0-9a-fA-F]{{{n}}}" for n in DIGEST_HEX_LENGTHS[name])
    return {"type": "string", "pattern": f"^(?:{lengths})$", "description": f"{name} digest, hex (case-insensitive)"}


ERROR: Schema = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}

LOOKUP_QUERY: Schema = {
    "type": "object",
    "properties": {name: hex_digest(name) for name in DIGEST_HEX_LENGTHS},
    "additionalProperties": False,
    "minProperties": 1,
}

MATCH: Schema = {
    "type": "object",
    "required": ["entry_id", "list", "category", "source", "kind", "score"],
    "properties": {
        "entry_id": {"type": ["integer", "string"]},
        "list": {"type": "string"},
        "category": {"type": "string"},
        "source": {"type": ["string", "null"]},
        "kind": {"type": "string", "description": "digest name, `fuzzy`, `url` or `domain`"},
        "score": {"type": "number"},
        "coefficient": {"type": ["number", "null"]},
        "base": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["active", "disputed"]},
    },
}

MATCH_RESULT: Schema = {
    "type": "object",
    "required": ["verdict", "matches"],
    "properties": {
        "verdict": {"type": "string", "enum": ["exact", "near", "none"], "description": "`none`: no list matched"},
        "matches": {"type": "array", "items": MATCH},
    },
}

HEALTH: Schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}

READINESS: Schema = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not ready"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
