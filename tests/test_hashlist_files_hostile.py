"""Hostile hash-list files (plain, CSV, JSON Lines) through the parsers and `modelsieve list import`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.api.cli import main
from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry, normalise_timestamp
from modelsieve.hashlists.parsers import parse_entries
from modelsieve.hashlists.sqlite_store import SQLiteStore

SHA_A, SHA_B = "a" * 64, "b" * 64
NESTED = b"[" * 30_000 + b"]" * 30_000  # far deeper than the JSON parser's recursion limit


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(tmp_path / "cli.db")
    assert run(capsys, "list", "create", "reports", "--db", path)[0] == 0
    return path


def test_files_starting_with_a_utf8_byte_order_mark_import(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: the header once read as '\\ufeffsha256' and the whole
    file was refused; a JSON Lines file lost its first line."""
    csv_file, jsonl_file = tmp_path / "excel.csv", tmp_path / "bom.jsonl"
    csv_file.write_bytes(b"\xef\xbb\xbfSHA256,Note\r\n" + SHA_A.encode() + b",title\r\n")
    jsonl_file.write_bytes(b"\xef\xbb\xbf" + json.dumps({"sha256": SHA_B}).encode() + b"\r\n")
    status, out, err = run(capsys, "list", "import", "--list", "reports", str(csv_file), str(jsonl_file), "--db", db, "--json")
    assert (status, err) == (0, "")
    assert [(r["format"], r["added"], r["rejected"]) for r in map(json.loads, out.splitlines())] == [("csv", 1, 0), ("jsonl", 1, 0)]


def test_a_nested_json_file_is_a_one_line_error_for_list_import(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hostile = tmp_path / "nested.jsonl"
    hostile.write_bytes(b"{\"note\": " + NESTED + b"}\n" + json.dumps({"sha256": SHA_A}).encode() + b"\n")
    status, out, err = run(capsys, "list", "import", "--list", "reports", str(hostile), "--db", db)
    assert status == 1 and "1 added" in out
    assert err.count("\n") == 1 and "line 1: not valid JSON" in err


def test_times_outside_the_calendar_are_line_errors_and_the_rest_imports(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """UTC conversion of year 1 at +01:00 or year 9999 at -01:00 raised OverflowError: a traceback
    that aborted the whole file."""
    text = f"sha256,expires\n{SHA_A},0001-01-01T00:00:00+01:00\n{SHA_B},2030-01-01\n"
    (tmp_path / "times.csv").write_text(text)
    status, out, err = run(capsys, "list", "import", "--list", "reports", str(tmp_path / "times.csv"), "--db", db)
    assert status == 1 and "1 added" in out and "line 2: not an ISO 8601 date or time in years 1-9999 UTC" in err
    status, _, err = run(capsys, "list", "add", "reports", "--sha256", "c" * 64, "--expires", "9999-12-31T23:30:00-01:00", "--db", db)
    assert status == 2 and err.startswith("modelsieve: error: ") and err.count("\n") == 1


def test_an_expiry_before_year_1000_takes_effect(tmp_path: Path) -> None:
    """Expiry compares stored times as text: '900-01-01T...' (strftime drops the leading zero)
    sorted after '2026-...', so an entry that had long expired kept matching."""
    assert normalise_timestamp("0900-01-01") == "0900-01-01T00:00:00Z"
    with SQLiteStore(tmp_path / "s.db") as store:
        store.create_list("reports", publisher="acme")
        store.add_entry("reports", NewEntry(category="2c", digests={"sha256": SHA_A}, expires="0900-01-01"))
        assert Matcher(store).match_digests({"sha256": SHA_A}) == []


@settings(max_examples=100, deadline=None)
@given(dates=st.lists(st.datetimes(timezones=st.timezones()), min_size=2, max_size=2))
def test_normalised_times_sort_as_text_in_time_order(dates: list) -> None:
    try:
        first, second = (normalise_timestamp(d.isoformat()) for d in dates)
    except InvalidEntryError:
        return  # outside years 1-9999 once in UTC
    earlier, later = (d.replace(microsecond=0) for d in dates)
    assert ((first < second), (first == second)) == ((earlier < later), (earlier == later))


def parse(text: str, format: str) -> list:
    return list(parse_entries(io.StringIO(text, newline=""), format))


@pytest.mark.parametrize("header", ["sha256,SHA256", "sha256, sha256 ", "md5,note,Note"])
def test_a_csv_header_naming_a_column_twice_is_refused(header: str) -> None:
    """Which value counted was the last column's, silently: "sha256,SHA256" with a value in the
    first column only rejected every row as having no digest."""
    [(number, error)] = parse(f"{header}\n{SHA_A},x,y\n", "csv")
    assert number == 1 and isinstance(error, InvalidEntryError) and "more than once" in str(error)


def test_json_keys_given_twice_with_different_values_are_a_line_error() -> None:
    lines = [
        {"sha256": SHA_A, "SHA256": SHA_B},
        {"sha256": SHA_A, "digests": {"sha256": SHA_B}},
        {"digests": {"sha256": SHA_A, "Sha256": SHA_B}},
        {"sha256": SHA_A, "SHA256": SHA_A.upper(), "digests": {"sha256": SHA_A}},  # the same digest: fine
        {"sha256": SHA_A, "Note": "", "note": "kept"},
    ]
    parsed = parse("".join(json.dumps(line) + "\n" for line in lines), "jsonl")
    assert [(n, "given twice with different values" in str(e)) for n, e in parsed[:3]] == [(1, True), (2, True), (3, True)]
    assert parsed[3][1].digests == {"sha256": SHA_A} and parsed[4][1].note == "kept"


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from(["", SHA_A, SHA_B.upper(), "x", '"', "\r\n", "\x00", "\ufeff", ","]), min_size=1, max_size=4), max_size=5),
       header=st.lists(st.sampled_from(["sha256", "SHA256", "md5", "note", "Note", "\ufeffsha256", "expires", "x"]), min_size=1, max_size=4))
def test_any_csv_yields_entries_or_numbered_one_line_errors(rows: list[list[str]], header: list[str]) -> None:
    text = "\r\n".join(",".join(row) for row in [header, *rows]) + "\r\n"
    for number, result in parse(text, "csv"):
        if isinstance(result, InvalidEntryError):
            assert str(result).startswith(f"line {number}:") and "\n" not in str(result)
        else:
            assert result.validated() == result


def test_nul_characters_in_text_fields_are_line_errors() -> None:
    """JSON can spell NUL as \\u0000; PostgreSQL text cannot hold it, so it is refused on every backend."""
    lines = [{"sha256": SHA_A, "note": "a\u0000b"}, {"sha256": SHA_A, "source": "\u0000"}, {"sha256": SHA_B, "note": "fine"}]
    parsed = parse("".join(json.dumps(line) + "\n" for line in lines), "jsonl")
    assert [str(e) for _, e in parsed[:2]] == ["line 1: note contains a NUL character", "line 2: source contains a NUL character"]
    assert parsed[2][1].note == "fine"
