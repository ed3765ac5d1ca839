"""JSON objects parsed strictly, for headers and index files that scanners and loaders must read alike."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from modelsieve.fingerprint.errors import ModelFileError, quoted


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates written as \ud800 escapes
        return False
    return True


class RepeatedKeys(dict[str, object]):
    """A JSON object that named some keys more than once (`repeated`); it holds the last value of each,
    as Python's json, serde's maps and JavaScript all read them."""

    repeated: tuple[str, ...] = ()


Pairs = list[tuple[str, object]]


def _repeated_keys(pairs: Pairs) -> tuple[str, ...]:
    """The keys named more than once, in the order of their first repeat."""
    seen: set[str] = set()
    repeats: dict[str, None] = {}
    for key, _ in pairs:
        if key in seen:
            repeats[key] = None
        seen.add(key)
    return tuple(repeats)


def _refusing_repeats(pairs: Pairs) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):  # the one pass in C found a repeat: name it
        raise ModelFileError(f"repeats the key {quoted(_repeated_keys(pairs)[0])}")
    return result


def _keeping_last(pairs: Pairs) -> dict[str, object]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    repeated = RepeatedKeys(result)
    repeated.repeated = _repeated_keys(pairs)
    return repeated


def _refusing_surrogates(object_from: Callable[[Pairs], dict[str, object]]) -> Callable[[Pairs], dict[str, object]]:
    """`object_from`, after refusing keys and string values with a lone surrogate."""

    def hook(pairs: Pairs) -> dict[str, object]:
        result = object_from(pairs)
        for key, value in pairs:
            if not _is_unicode(key) or (isinstance(value, str) and not _is_unicode(value)):
                raise ModelFileError("has a string with a lone surrogate escape")
        return result

    return hook


def load_json_object(data: bytes, what: str, *, keep_last: bool = False) -> dict[str, object]:
    """`data` as one JSON object: valid UTF-8, no repeated keys, no lone surrogates, nesting bounded.

    With `keep_last`, a repeated key is no error: the object keeps its last value, as loaders read
    it, and comes back as a `RepeatedKeys` naming the repeats, for the caller to judge.
    Errors read "<what> is not valid JSON: ...", "<what> repeats the key 'a'", and so on.
    """
    try:
        text = data.decode("utf-8")
        # Valid UTF-8 holds no surrogates: a lone one can only come from a \u escape, so text
        # without one skips the per-string check (the common case, and much faster).
        hook: Callable[[Pairs], dict[str, object]] = _keeping_last if keep_last else _refusing_repeats
        if "\\u" in text:
            hook = _refusing_surrogates(hook)
        document = json.loads(text, object_pairs_hook=hook)
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{what} is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except ValueError:  # CPython refuses to convert integers of more than 4300 digits (CVE-2020-10735)
        raise ModelFileError(f"{what} holds an integer with more than {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise ModelFileError(f"{what} is nested too deeply") from None
    except ModelFileError as exc:
        raise ModelFileError(f"{what} {exc}") from None
    if not isinstance(document, dict):
        raise ModelFileError(f"{what} is not a JSON object")
    return document


def read_json_object(path: str | os.PathLike[str], max_bytes: int) -> dict[str, object]:
    """The JSON object in file `path` (see `load_json_object`), refused unread beyond `max_bytes`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ModelFileError(f"{path}: larger than the bound of {max_bytes} bytes")
    return load_json_object(data, str(path))
