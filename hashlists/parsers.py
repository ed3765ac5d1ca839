"""Readers of hash lists other tools publish: plain SHA-256 lists, CSV and JSON Lines.

Each reader yields `(line_number, NewEntry | InvalidEntryError)`: a bad line is reported with its
number and the rest goes on. Column / key names are the digest names (`sha256`, `blake3`, `md5`,
`sha1`, `crc32`, `autov1`, `autov2`, `autov3`) plus optional `category`, `kind`, `source`,
`evidence`, `first_seen`, `expires`, `note`, `url`, `domain`; other columns are ignored. A JSON
object may also carry its digests under `"digests"` (the form `modelsieve list show --json` prints).
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TextIO

from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.model import DIGEST_LENGTHS, NewEntry

MAX_LINE = 1 << 20  # one entry never needs a megabyte; longer lines are hostile
OVERLONG = f"longer than {MAX_LINE} characters"
_FIELDS = ("category", "kind", "source", "evidence", "first_seen", "expires", "note", "url", "domain")
_CASE_FREE_FIELDS = frozenset({"category", "kind", "evidence"})
_PLAIN_LINE = re.compile(r"([0-9A-Fa-f]{64})(?:\s+\*?(.*))?")

ParsedLine = tuple[int, NewEntry | InvalidEntryError]


@dataclass(frozen=True)
class Defaults:
    """Field values for entries whose line does not give them."""

    category: str = "2c"
    kind: str = "other"
    source: str = ""
    evidence: str = "osint-report"


UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # how a UTF-16 text file begins


def open_text(path: str | os.PathLike[str], *, newline: str | None = None) -> TextIO:
    """A text file as people save one: UTF-8 with or without a byte order mark, or UTF-16 with its
    mark (what Windows PowerShell's `>` and Notepad's "Unicode" write); undecodable bytes become
    U+FFFD. The mark itself is never part of the text."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return open(path, encoding="utf-16" if head in UTF16_MARKS else "utf-8-sig", errors="replace", newline=newline)


def detect_format(first_line: str) -> str:
    """plain, csv or jsonl, judged from the first non-blank line of a file."""
    text = first_line.strip().lstrip("\ufeff")
    if text.startswith("{"):
        return "jsonl"
    if _PLAIN_LINE.fullmatch(text) or text.startswith("#"):
        return "plain"
    return "csv"


def _read_lines(stream: TextIO) -> Iterator[tuple[int, str | None]]:
    """Numbered lines, None for a line longer than MAX_LINE (the rest of it is skipped unread)."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE)
        if not line:
            return
        number += 1
        if number == 1:
            line = line.removeprefix("\ufeff")  # the byte-order mark Excel's "CSV UTF-8" starts with
        if len(line) >= MAX_LINE and not line.endswith("\n"):
            while (rest := stream.readline(MAX_LINE)) and not rest.endswith("\n"):
                pass
            yield number, None
        else:
            yield number, line


def _lowered(pairs: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """Key-value pairs as a dict with keys stripped and lower-cased. A key given twice (in any case)
    with two different values is an error, never silently the last one; empty values give way."""
    lowered: dict[str, Any] = {}
    for key, value in pairs:
        name = str(key).strip().lower()
        if name in lowered and not _empty(value) and not _empty(lowered[name]) and not _same(lowered[name], value):
            raise InvalidEntryError(f"{name!r} is given twice with different values")
        if name not in lowered or not _empty(value):
            lowered[name] = value
    return lowered


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _same(a: Any, b: Any) -> bool:
    """Equal, ignoring the case and surrounding spaces of text (digests are case-insensitive)."""
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    return bool(a == b)


def _entry_from_record(record: Mapping[str, Any], defaults: Defaults) -> NewEntry:
    """A validated entry from a CSV row or JSON object (keys compared case-insensitively)."""
    lowered = _lowered(record.items())
    nested = lowered.get("digests") or {}
    if not isinstance(nested, Mapping):
        raise InvalidEntryError("'digests' must be an object of digest name → hex value")
    digests = _lowered([*nested.items(), *((name, lowered[name]) for name in DIGEST_LENGTHS if lowered.get(name))])
    fields = {name: lowered[name] for name in _FIELDS if lowered.get(name) not in (None, "")}
    for name, value in [*digests.items(), *fields.items()]:
        if not isinstance(value, str):
            raise InvalidEntryError(f"{name} must be a string, got {type(value).__name__}")
    for name in _CASE_FREE_FIELDS.intersection(fields):  # third-party lists write "LoRA", "2C", "OSINT-report"
        fields[name] = fields[name].strip().lower()
    entry = NewEntry(
        category=fields.pop("category", defaults.category),
        kind=fields.pop("kind", defaults.kind),
        source=fields.pop("source", defaults.source),
        evidence=fields.pop("evidence", defaults.evidence),
        digests=digests,
        **fields,
    )
    if entry.url or entry.domain:
        entry = replace(entry, category=lowered.get("category") or "nudify-service")
    return entry.validated()


def _plain_records(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, line in _read_lines(stream):
        if line is None:
            yield number, OVERLONG
            continue
        text = line.strip().lstrip("\ufeff")
        if not text or text.startswith("#"):
            continue
        found = _PLAIN_LINE.fullmatch(text)
        yield number, {"sha256": found.group(1)} if found else f"not a SHA-256 value: {text[:80]!r}"


def _jsonl_records(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, line in _read_lines(stream):
        if line is None:
            yield number, OVERLONG
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            yield number, f"not valid JSON: {str(exc)[:120]}"
            continue
        yield number, record if isinstance(record, dict) else "not a JSON object"


def _csv_records(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(line if line is not None else "\x00" for _, line in _read_lines(stream))
    try:
        header = [name.strip().lower() for name in reader.fieldnames or ()]
    except csv.Error as exc:
        yield 1, f"not a CSV header: {exc}"
        return
    if not set(header) & {*DIGEST_LENGTHS, "url", "domain"}:
        yield 1, f"the CSV header names no digest, url or domain column: {header[:10]}"
        return
    repeated = sorted({name for name in header if header.count(name) > 1} & {*DIGEST_LENGTHS, *_FIELDS, "digests"})
    if repeated:
        yield 1, f"the CSV header names {', '.join(repeated)} more than once (case and spaces aside): which one counts?"
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # DictReader.line_num is still the last good row's: ask its csv reader
            yield reader.reader.line_num, str(exc)
            continue
        if None in row or any(value is not None and "\x00" in value for value in row.values()):
            yield reader.line_num, "more fields than the header, a NUL byte or an overlong line"
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v is not None}


_RECORD_READERS = {"plain": _plain_records, "csv": _csv_records, "jsonl": _jsonl_records}
FORMATS = tuple(_RECORD_READERS)


def parse_entries(stream: TextIO, format: str, defaults: Defaults = Defaults()) -> Iterator[ParsedLine]:
    """Entries of a plain, csv or jsonl document; a bad line yields an error naming its line number.

    plain: SHA-256 values one a line (`sha256sum` output too; blank and `#` lines skipped).
    csv: a header row naming digests and optional fields, any order and case.
    jsonl: one object per line with the same keys (blank lines skipped).
    """
    for number, record in _RECORD_READERS[format](stream):
        if isinstance(record, str):
            yield number, InvalidEntryError(f"line {number}: {record}")
            continue
        try:
            yield number, _entry_from_record(record, defaults)
        except InvalidEntryError as exc:
            yield number, InvalidEntryError(f"line {number}: {exc}")
