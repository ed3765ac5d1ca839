"""Crawl input: one URL per line, or JSON Lines objects with `url` and optional context.

Blank lines and `#` comments are skipped; every other line either becomes a CrawlTarget or a
BadLine saying, in one line, what is wrong with it, so a caller can report it and go on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from modelsieve.crawler.model import CrawlTarget
from modelsieve.crawler.netguard import ALLOWED_SCHEMES
from modelsieve.hashlists.parsers import open_text

MAX_URL_LENGTH = 8192
MAX_LINE_LENGTH = 1024 * 1024


@dataclass(frozen=True)
class BadLine:
    """An input line that names no crawlable URL."""

    line: int
    problem: str


def check_target_url(text: str) -> str:
    """The URL, stripped, if it is an absolute http(s) URL with a host; ValueError otherwise."""
    url_text = text.strip()
    if not url_text:
        raise ValueError("empty URL")
    if len(url_text) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url_text):
        raise ValueError("URL contains whitespace or control characters")
    try:
        url = URL(url_text)
        host = url.host
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ALLOWED_SCHEMES:
        raise ValueError(f"not an http(s) URL: {url_text[:80]!r}")
    if not host:
        raise ValueError("URL has no host")
    return url_text


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # the context is echoed into the output, which must stay strict JSON


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def _holds_lone_surrogate(record: object) -> bool:
    """Whether a parsed JSON value holds a lone surrogate: no UTF-8 store or output file can hold it."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_line(text: str, line: int) -> CrawlTarget | BadLine | None:
    """One input line → a target, a BadLine, or None for blank lines and comments."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if len(stripped) > MAX_LINE_LENGTH:
        return BadLine(line, f"line longer than {MAX_LINE_LENGTH} characters")
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped, parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):  # also the int digit limit, which is no JSONDecodeError
            return BadLine(line, "not valid JSON")
        if "\\u" in stripped and _holds_lone_surrogate(record):  # decoded UTF-8 holds none without an escape
            return BadLine(line, "the JSON holds a lone surrogate escape (\\ud800-\\udfff), which is not text")
        if not isinstance(record, dict) or not isinstance(record.get("url"), str):
            return BadLine(line, 'a JSON line needs a string "url"')
        context = record.get("context", {k: v for k, v in record.items() if k != "url"})
        if not isinstance(context, dict):
            return BadLine(line, '"context" must be a JSON object')
        candidate = record["url"]
    else:
        context, candidate = {}, stripped
    try:
        return CrawlTarget(check_target_url(candidate), context, line)
    except ValueError as exc:
        return BadLine(line, str(exc))


def bounded_lines(path: Path) -> Iterator[str]:
    """The lines of a URL file (`hashlists.parsers.open_text`: UTF-8, or UTF-16 with its byte order
    mark; undecodable bytes replaced; any newline convention), each cut after MAX_LINE_LENGTH + 1
    characters: a longer line costs no more memory than that and is still one line, which
    `parse_line` reports as too long."""
    with open_text(path) as handle:
        while line := handle.readline(MAX_LINE_LENGTH + 1):
            if len(line) > MAX_LINE_LENGTH and not line.endswith("\n"):
                while (rest := handle.readline(MAX_LINE_LENGTH + 1)) and not rest.endswith("\n"):
                    pass  # the rest of the over-long line, read and dropped piece by piece
            yield line


def read_targets(lines: Iterable[str]) -> Iterator[CrawlTarget | BadLine]:
    """Targets and bad lines, in input order, numbered from 1."""
    for number, text in enumerate(lines, start=1):
        parsed = parse_line(text, number)
        if parsed is not None:
            yield parsed
