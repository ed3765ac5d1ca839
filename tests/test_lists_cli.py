"""`modelsieve list ...` end to end on a real store file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelsieve.api.cli import main
from modelsieve.hashlists.sqlite_store import SQLiteStore

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(tmp_path / "cli.db")
    assert run(capsys, "list", "create", "reports", "--publisher", "acme", "--db", path)[0] == 0
    return path


def test_add_hash_only_entries_urls_and_domains(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list", "add", "reports", "--sha256", SHA.upper(), "--crc32", "0d4a1185", "--kind", "lora",
                         "--note", "victim name", "--db", db, "--json")
    [entry] = json_lines(out)
    assert status == 0 and entry["result"] == "added" and entry["digests"] == {"sha256": SHA, "crc32": "0d4a1185"}
    assert "note" not in entry and "victim" not in out
    status, out, _ = run(capsys, "list", "add", "reports", "--sha256", SHA, "--crc32", "0D4A1185", "--db", db)
    assert status == 0 and out.startswith("already listed: " + entry["entry_id"])
    assert run(capsys, "list", "retract", entry["entry_id"], "--reason", "false positive", "--db", db)[0] == 0
    status, out, _ = run(capsys, "list", "add", "reports", "--sha256", SHA, "--db", db)
    assert status == 0 and out.startswith("already listed, retracted: " + entry["entry_id"])
    assert out.rstrip().endswith("(a retracted entry never matches again)"), "re-adding a false positive does not revive it"
    status, out, _ = run(capsys, "list", "add", "reports", "--url", "https://Nudify.example.com/app", "--domain", "www.undress.co.uk", "--db", db, "--json")
    records = json_lines(out)
    assert [(r["url"], r["domain"], r["category"]) for r in records] == [
        ("https://nudify.example.com/app", None, "nudify-service"),
        (None, "undress.co.uk", "nudify-service"),
    ]


def test_a_file_that_cannot_be_fingerprinted_is_listed_by_its_digests_with_one_plain_note(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"junk\n")
    status, out, err = run(capsys, "list", "add", "reports", str(path), "--db", db, "--json")
    [entry] = json_lines(out)
    assert status == 0 and entry["result"] == "added" and entry["fingerprint_bytes"] == 0 and entry["digests"]["sha256"]
    assert err == f"modelsieve: {path}: added by its digests only, not fingerprinted: truncated safetensors file: 5 bytes, need at least 8\n"


def test_notes_are_shown_only_when_asked(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "list", "add", "reports", "--sha256", SHA, "--note", "victim name", "--db", db)
    _, out, _ = run(capsys, "list", "show", "reports", "--db", db)
    assert SHA in out and "victim" not in out
    _, out, _ = run(capsys, "list", "show", "reports", "--notes", "--db", db)
    assert "note: victim name" in out


def test_import_plain_csv_jsonl_reports_bad_lines_and_is_idempotent(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "list.txt"
    plain.write_text(f"# hotline list\n{SHA}\n{'1' * 64}  a.safetensors\nnonsense\n")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(f"sha256,blake3,category\n{'2' * 64},{'3' * 64},2b\n")
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"domain": "www.Undress.co.uk."}) + "\n" + json.dumps({"domain": "t.me/somebot"}) + "\n")
    status, out, err = run(capsys, "list", "import", "--list", "reports", str(plain), str(csv_file), str(jsonl), "--source", "hotline", "--db", db, "--json")
    summaries = json_lines(out)
    assert status == 1, "a rejected line makes the exit status 1"
    assert [(s["format"], s["added"], s["rejected"]) for s in summaries] == [("plain", 2, 1), ("csv", 1, 0), ("jsonl", 1, 1)]
    assert "line 4" in err and "nonsense" in err
    assert "line 2" in err and "not a page" in err
    status, out, _ = run(capsys, "list", "import", "--list", "reports", str(csv_file), "--db", db, "--json")
    assert status == 0 and json_lines(out)[0]["added"] == 0 and json_lines(out)[0]["already_listed"] == 1
    with SQLiteStore(db) as store:
        assert store.counts("reports")["entries"] == 4
        assert {e.source for e in store.entries("reports")} == {"hotline"}


def test_retract_dispute_confirm_and_stats(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "list", "add", "reports", "--md5", "a" * 32, "--db", db, "--json")
    entry_id = json_lines(out)[0]["entry_id"]
    assert run(capsys, "list", "dispute", entry_id, "--reason", "benign", "--db", db)[1] == f"{entry_id}: disputed\n"
    assert run(capsys, "list", "dispute", entry_id, "--confirm", "--db", db)[1] == f"{entry_id}: active\n"
    assert run(capsys, "list", "retract", entry_id, "--db", db)[1] == f"{entry_id}: retracted\n"
    status, out, _ = run(capsys, "list", "stats", "reports", "--db", db, "--json")
    [stats] = json_lines(out)
    assert status == 0 and stats["status:retracted"] == 1 and stats["digest:md5"] == 1 and stats["last_seq"] == 5
    assert stats["expired"] == 0, "a retracted entry is not counted as expired"
    status, _, err = run(capsys, "list", "add", "reports", "--md5", "b" * 32, "--expires", "2001-01-01", "--db", db)
    assert status == 0 and err.startswith("modelsieve: note: e") and err.endswith("expired at 2001-01-01T00:00:00Z: it will never match\n")
    status, out, _ = run(capsys, "list", "stats", "reports", "--db", db)
    assert out.splitlines()[-1].split() == ["expired", "(no", "longer", "match)", "1"]
    _, out, _ = run(capsys, "list", "show", "--db", db)
    assert out == "reports: 2 entries, publisher acme\n"


def test_errors_are_one_line_with_status_2(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "list", "add", "nolist", "--sha256", SHA, "--db", db)
    assert status == 2 and err.startswith("modelsieve: error: no list called 'nolist'") and err.count("\n") == 1
    status, _, err = run(capsys, "list", "add", "reports", "--sha256", "abc", "--db", db)
    assert status == 2 and "64 hex" in err
    status, _, err = run(capsys, "list", "add", "reports", "--db", db)
    assert status == 2 and "nothing to add" in err
    hashes = Path(db).parent / "x.txt"
    hashes.write_text(SHA + "\n")
    status, _, err = run(capsys, "list", "import", str(hashes), "--db", db)
    assert status == 2 and "--list" in err


def test_keys_trust_export_import_through_the_command_line(tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "keys", "generate", "acme", "--dir", str(tmp_path / "keys"), "--json")
    [key] = json_lines(out)
    assert status == 0 and (tmp_path / "keys" / "acme.key").stat().st_mode & 0o777 == 0o600
    private_text = (tmp_path / "keys" / "acme.key").read_text()
    assert "PRIVATE" in private_text and private_text.splitlines()[1] not in out, "the private key is never printed"
    assert run(capsys, "keys", "generate", "acme", "--dir", str(tmp_path / "keys"))[0] == 2, "never overwritten"
    run(capsys, "list", "add", "reports", "--sha256", SHA, "--db", db)
    bundle = tmp_path / "reports.bundle"
    status, out, _ = run(capsys, "list", "export", "reports", "--key", key["private_key_file"], "-o", str(bundle), "--db", db)
    assert status == 0 and "1 entries" in out
    other = str(tmp_path / "other.db")
    status, _, err = run(capsys, "list", "import", str(bundle), "--db", other)
    assert status == 2 and "unknown publisher 'acme'" in err
    assert run(capsys, "trust", "add", "acme", key["public_key_file"], "--level", "review", "--db", other)[0] == 0
    assert "acme: level review" in run(capsys, "trust", "list", "--db", other)[1]
    status, out, _ = run(capsys, "list", "import", str(bundle), "--db", other, "--json")
    assert status == 0 and json_lines(out)[0]["entries"] == 1
    status, _, err = run(capsys, "list", "import", str(bundle), "--db", other)
    assert status == 2 and "replayed" in err
