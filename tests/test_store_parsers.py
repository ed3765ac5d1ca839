"""Hash-list parsers (plain, CSV, JSON Lines): fixed cases and hostile input."""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.parsers import FORMATS, MAX_LINE, Defaults, detect_format, open_text, parse_entries

SHA_A, SHA_B = "a" * 64, "B" * 64


def parse(text: str, format: str, defaults: Defaults = Defaults()) -> list:
    return list(parse_entries(io.StringIO(text), format, defaults))


def test_plain_lists_and_sha256sum_output() -> None:
    parsed = parse(f"# list\n\n{SHA_A}\n{SHA_B}  model.safetensors\nnot-a-hash\n", "plain", Defaults(source="hotline"))
    assert [(n, e.digests, e.source) for n, e in parsed[:2]] == [(3, {"sha256": SHA_A}, "hotline"), (4, {"sha256": SHA_B.lower()}, "hotline")]
    [(number, error)] = parsed[2:]
    assert number == 5 and isinstance(error, InvalidEntryError) and "line 5" in str(error)


def test_csv_with_any_column_order_case_and_extra_columns() -> None:
    text = f"Title,CRC32,SHA256,category,Note\nx,0D4A1185,{SHA_A},2b,secret\ny,,{SHA_B},,\n"
    [(_, first), (_, second)] = parse(text, "csv")
    assert first.digests == {"sha256": SHA_A, "crc32": "0d4a1185"} and first.category == "2b" and first.note == "secret"
    assert second.digests == {"sha256": SHA_B.lower()} and second.category == "2c"


def test_category_kind_and_evidence_values_are_read_whatever_their_case() -> None:
    """A partner's CSV saying "LoRA" or "2C" had every line rejected."""
    text = f"sha256,kind,category,evidence\n{SHA_A},LoRA,2C, OSINT-Report \n{SHA_B},Checkpoint,2b,exact-file\n"
    [(_, first), (_, second)] = parse(text, "csv")
    assert (first.kind, first.category, first.evidence) == ("lora", "2c", "osint-report")
    assert (second.kind, second.category) == ("checkpoint", "2b")
    [(_, error)] = parse(json.dumps({"sha256": SHA_A, "kind": "LyCORIS"}) + "\n", "jsonl")
    assert isinstance(error, InvalidEntryError) and "lycoris" in str(error)


def test_csv_without_an_identity_column_is_refused_at_its_header() -> None:
    [(number, error)] = parse("title,size\nx,1\n", "csv")
    assert number == 1 and isinstance(error, InvalidEntryError)


def test_jsonl_flat_and_nested_digests_urls_and_bad_lines() -> None:
    lines = [
        json.dumps({"md5": "0" * 32, "kind": "lora"}),
        json.dumps({"digests": {"AUTOV3": "ab" * 6}, "expires": "2030-01-01"}),
        json.dumps({"url": "https://nudify.example.com/x"}),
        "[1, 2]",
        "{broken",
        json.dumps({"sha1": 5}),
    ]
    parsed = parse("\n".join(lines) + "\n", "jsonl")
    entries = [e for _, e in parsed if not isinstance(e, InvalidEntryError)]
    assert [e.kind for e in entries] == ["lora", "other", "service"]
    assert entries[1].digests == {"autov3": "ab" * 6} and entries[1].expires == "2030-01-01T00:00:00Z"
    assert entries[2].category == "nudify-service"
    assert [n for n, e in parsed if isinstance(e, InvalidEntryError)] == [4, 5, 6]


def test_overlong_lines_are_rejected_without_stopping_the_rest() -> None:
    parsed = parse(f"{'a' * (MAX_LINE + 10)}\n{SHA_A}\n", "plain")
    assert isinstance(parsed[0][1], InvalidEntryError) and parsed[1] == (2, parsed[1][1])
    assert parsed[1][1].digests == {"sha256": SHA_A}


def test_format_detection() -> None:
    assert detect_format("{\"sha256\": 1}") == "jsonl"
    assert detect_format(SHA_A + "  file") == "plain"
    assert detect_format("\ufeffsha256,note") == "csv"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FORMATS), st.text(max_size=400))
def test_any_text_yields_entries_or_numbered_errors(format: str, text: str) -> None:
    for number, result in parse(text, format):
        assert number >= 1
        if isinstance(result, InvalidEntryError):
            assert str(result).startswith(f"line {number}:") and "\n" not in str(result)
        else:
            assert result.validated() == result


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["sha256", "md5", "kind", "note", "url", "digests", "x"]), st.one_of(st.none(), st.integers(), st.text(max_size=70), st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)), max_size=5), max_size=8))
def test_any_json_objects_yield_entries_or_numbered_errors(records: list) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    parsed = parse(text, "jsonl")
    assert [n for n, _ in parsed] == list(range(1, len(records) + 1))


SAVED_AS = {  # how editors and shells save text: encoding, the bytes that start the file
    "utf-8": ("utf-8", b""),
    "utf-8 with BOM": ("utf-8", codecs.BOM_UTF8),
    "utf-16-le with BOM (PowerShell >)": ("utf-16-le", codecs.BOM_UTF16_LE),
    "utf-16-be with BOM": ("utf-16-be", codecs.BOM_UTF16_BE),
}


@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200), saved_as=st.sampled_from(sorted(SAVED_AS)))
@settings(max_examples=150, deadline=None)
def test_open_text_reads_back_the_text_however_it_was_saved(tmp_path_factory: pytest.TempPathFactory, text: str, saved_as: str) -> None:
    encoding, mark = SAVED_AS[saved_as]
    path = tmp_path_factory.mktemp("text") / "list.txt"
    path.write_bytes(mark + text.encode(encoding))
    with open_text(path, newline="") as stream:
        assert stream.read() == (text.removeprefix("\ufeff") if not mark and encoding == "utf-8" else text)


@given(data=st.binary(max_size=200))
@settings(max_examples=150, deadline=None)
def test_open_text_never_fails_on_arbitrary_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("bytes") / "list.txt"
    path.write_bytes(data)
    with open_text(path) as stream:
        assert isinstance(stream.read(), str)


def test_a_utf16_list_parses_as_its_utf8_twin(tmp_path: Path) -> None:
    text = f"sha256,category\r\n{SHA_A},2b\r\n"
    path = tmp_path / "list.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    with open_text(path, newline="") as stream:
        assert list(parse_entries(stream, "csv", Defaults())) == parse(text, "csv")
