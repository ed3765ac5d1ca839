"""JSON schemas (draft 2020-12) of what the API accepts and returns; OpenAPI embeds the same ones."""

from __future__ import annotations

from typing import Any, get_args

from modelsieve.crawler.model import Action
from modelsieve.crawler.policy import Mode
from modelsieve.hashlists.model import DIGEST_LENGTHS

Schema = dict[str, Any]


def hex_digest(name: str) -> Schema:
    """The schema of one digest's value: hex of any length the digest comes in."""
    lengths = "|".join(f"[0-9a-fA-F]{{{n}}}" for n in DIGEST_LENGTHS[name])
    return {"type": "string", "pattern": f"^(?:{lengths})$", "description": f"{name} digest, hex (case-insensitive)"}


ERROR: Schema = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}

LOOKUP_QUERY: Schema = {
    "type": "object",
    "properties": {name: hex_digest(name) for name in DIGEST_LENGTHS},
    "additionalProperties": False,
    "minProperties": 1,
}

URL_LOOKUP_QUERY: Schema = {
    "type": "object",
    "required": ["url"],
    "properties": {"url": {"type": "string", "minLength": 1, "maxLength": 4096, "description": "an http(s) URL; never fetched"}},
    "additionalProperties": False,
}

NULLABLE_STRING: Schema = {"type": ["string", "null"]}
NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}

MATCH: Schema = {
    "type": "object",
    "description": "one list entry matched, with its evidence (the CLI's `--json` match object)",
    "required": ["entry_id", "list", "category", "source", "kind", "score", "status"],
    "properties": {
        "entry_id": {"type": "string"},
        "list": {"type": "string"},
        "category": {"type": "string", "description": "safety category: 1, 2a, 2b, 2c, nudify-service"},
        "source": {"type": "string", "description": "the organisation that listed the entry"},
        "kind": {"type": "string", "description": "the digest name that matched, `fuzzy`, `url` or `domain`"},
        "score": {"type": "number", "description": "1 for equal digests; the calibrated fuzzy score otherwise"},
        "coefficient": NULLABLE_NUMBER,
        "base": NULLABLE_STRING,
        "status": {"type": "string", "enum": ["active", "disputed"]},
        "origin": NULLABLE_STRING,
        "trust": {"type": "string"},
        "evidence": {"type": "string"},
        "bits": {"type": "integer"},
        "digests": {"type": "array", "items": {"type": "string"}, "description": "the digests that agree, strongest first"},
        "differing": {
            "type": "array",
            "items": {"type": "string"},
            "description": "shared digests whose listed value differs (a match on a stronger digest: the list's value is wrong or computed another way)",
        },
        "similarity": {"type": "number"},
    },
}

VERDICT: Schema = {"type": "string", "enum": ["exact", "near", "none"], "description": "`exact`: a listed URL or domain, or digests agreeing on 64 bits or more; `near`: fuzzy matches or shorter digests only (for a person to review); `none`: no list matched (never 'clean')"}


def match_result(**computed: Schema) -> Schema:
    """A match answer: verdict, matches, and what the route computed from its input."""
    return {
        "type": "object",
        "required": ["verdict", "matches", *computed],
        "properties": {**computed, "verdict": VERDICT, "matches": {"type": "array", "items": MATCH}},
    }


DIGESTS: Schema = {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[0-9a-fA-F]+$"}}

LOOKUP_RESULT = match_result(digests=DIGESTS)

URL_LOOKUP_RESULT = match_result(url={"type": "string", "description": "the URL as given"})

FINGERPRINT: Schema = {
    "type": "object",
    "description": "a fingerprint as `Fingerprint.to_json()` writes it; `data` is its binary form in base64",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "contentEncoding": "base64", "minLength": 1},
        "scheme": {"type": "integer"},
        "key_id": {"type": "string"},
        "key_check": {"type": "string"},
        "kind": {"type": "string", "enum": ["checkpoint", "lora"]},
        "base": NULLABLE_STRING,
        "tensors": {"type": "integer"},
    },
}

FINGERPRINT_BODY: Schema = {
    "type": "object",
    "required": ["fingerprint"],
    "properties": {"fingerprint": FINGERPRINT},
    "additionalProperties": False,
}

FINGERPRINT_MATCH_RESULT = match_result(
    fingerprint={
        "type": "object",
        "properties": {"kind": {"type": "string"}, "base": NULLABLE_STRING, "tensors": {"type": "integer"}},
    }
)

FILE_MATCH_RESULT = match_result(
    size={"type": "integer"},
    format={"type": "string", "enum": ["safetensors", "other"]},
    digests=DIGESTS,
    fingerprinted={"type": "boolean", "description": "whether tensors were fingerprinted (safetensors only)"},
    problems={"type": "array", "items": {"type": "string"}, "description": "e.g. why the file could only be matched on digests"},
)

HEALTH: Schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}

READINESS: Schema = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not ready"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

LIST_NAME: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "description": "a list's name"}
LIST_PATH: Schema = {"type": "object", "required": ["list"], "properties": {"list": LIST_NAME}}
ENTRY_PATH: Schema = {
    "type": "object",
    "required": ["entry_id"],
    "properties": {"entry_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$", "description": "a list entry's id"}},
}

BUNDLE_QUERY: Schema = {
    "type": "object",
    "properties": {
        "since": {
            "type": "integer",
            "minimum": 0,
            "maximum": 2**63 - 1,
            "description": "the sequence number the importer has (the last bundle's to_seq); 0 or absent: everything",
        }
    },
    "additionalProperties": False,
}

IMPORT_REPORT: Schema = {
    "type": "object",
    "required": ["publisher", "type", "from_seq", "to_seq", "entries", "tombstones", "opinions"],
    "properties": {
        "publisher": {"type": "string"},
        "type": {"type": "string", "enum": ["entries", "opinions"]},
        "list": NULLABLE_STRING,
        "from_seq": {"type": "integer"},
        "to_seq": {"type": "integer"},
        "entries": {"type": "integer"},
        "tombstones": {"type": "integer"},
        "opinions": {"type": "integer"},
    },
}

REASON: Schema = {"type": "string", "maxLength": 2000, "pattern": "^[^\\x00]*$"}  # free text without NUL (PostgreSQL text holds none)

OPINION_BODY: Schema = {
    "type": "object",
    "required": ["opinion"],
    "properties": {
        "opinion": {"type": "string", "enum": ["dispute", "confirm"], "description": "dispute: suspected false positive"},
        "reason": {**REASON, "description": "kept in the store; never logged"},
    },
    "additionalProperties": False,
}

OPINION_RESULT: Schema = {
    "type": "object",
    "required": ["entry_id", "opinion", "status"],
    "properties": {
        "entry_id": {"type": "string"},
        "opinion": {"type": "string", "enum": ["dispute", "confirm"]},
        "status": {"type": "string", "enum": ["active", "disputed", "retracted"]},
    },
}

RETRACT_BODY: Schema = {
    "type": "object",
    "properties": {"reason": {**REASON, "description": "kept in the store's event log; never logged"}},
    "additionalProperties": False,
}

RETRACT_RESULT: Schema = {
    "type": "object",
    "required": ["entry_id", "list", "status", "seq"],
    "properties": {
        "entry_id": {"type": "string"},
        "list": {"type": "string"},
        "status": {"type": "string", "enum": ["retracted"]},
        "seq": {"type": "integer", "description": "the store sequence number of the retraction (bundles carry it as a tombstone)"},
    },
}

CRAWL_URL_LIMIT = 10_000
CRAWL_BODY: Schema = {
    "type": "object",
    "required": ["urls"],
    "properties": {
        "urls": {
            "type": "array",
            "minItems": 1,
            "maxItems": CRAWL_URL_LIMIT,
            "items": {
                "anyOf": [
                    {"type": "string", "maxLength": 8192},
                    {
                        "type": "object",
                        "required": ["url"],
                        "properties": {"url": {"type": "string", "maxLength": 8192}, "context": {"type": "object"}},
                        "additionalProperties": False,
                    },
                ]
            },
        },
        "mode": {"type": "string", "enum": list(get_args(Mode)), "default": "search"},
    },
    "additionalProperties": False,
}

JOB_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
CRAWL_PATH: Schema = {"type": "object", "required": ["id"], "properties": {"id": JOB_ID}}
CRAWL_QUERY: Schema = {
    "type": "object",
    "properties": {
        "cursor": {"type": "integer", "minimum": 0, "maximum": 2**53, "description": "`next_cursor` of the previous page"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    "additionalProperties": False,
}

JOB_STATUS: Schema = {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]}
CRAWL_LIST_QUERY: Schema = {
    "type": "object",
    "properties": {
        "cursor": {**JOB_ID, "description": "`next_cursor` of the previous page: the jobs submitted before that one"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    },
    "additionalProperties": False,
}
JOB_SUMMARY: Schema = {
    "type": "object",
    "required": ["id", "key_id", "status", "mode", "created_at", "finished_at", "total", "done", "error"],
    "properties": {
        "id": JOB_ID,
        "key_id": {"type": "string"},
        "status": JOB_STATUS,
        "mode": {"type": "string"},
        "created_at": {"type": "string"},
        "finished_at": NULLABLE_STRING,
        "total": {"type": "integer"},
        "done": {"type": "integer"},
        "error": NULLABLE_STRING,
    },
}
CRAWL_JOB_LIST: Schema = {
    "type": "object",
    "required": ["jobs", "next_cursor"],
    "properties": {"jobs": {"type": "array", "items": JOB_SUMMARY}, "next_cursor": {"anyOf": [JOB_ID, {"type": "null"}]}},
}
CRAWL_SUBMITTED: Schema = {
    "type": "object",
    "required": ["id", "status", "mode", "total"],
    "properties": {"id": {"type": "string"}, "status": JOB_STATUS, "mode": {"type": "string"}, "total": {"type": "integer"}},
}
RECOMMENDATION: Schema = {
    "type": "object",
    "required": ["url", "action", "reason", "evidence", "checked_at"],
    "properties": {
        "url": {"type": "string"},
        "final_url": NULLABLE_STRING,
        "action": {"type": "string", "enum": list(get_args(Action))},
        "reason": {"type": "string"},
        "evidence": {"type": "object", "properties": {"matches": {"type": "array", "items": MATCH}}},
        "checked_at": {"type": "string"},
        "context": {"type": "object"},
    },
}
CRAWL_JOB: Schema = {
    "type": "object",
    "required": ["id", "status", "total", "done", "recommendations", "cursor", "next_cursor"],
    "properties": {
        "id": {"type": "string"},
        "status": JOB_STATUS,
        "mode": {"type": "string"},
        "total": {"type": "integer"},
        "done": {"type": "integer"},
        "error": NULLABLE_STRING,
        "recommendations": {"type": "array", "items": RECOMMENDATION},
        "cursor": {"type": "integer"},
        "next_cursor": {"type": "integer"},
    },
}
