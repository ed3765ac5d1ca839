"""What a new user gets wrong on the command line: each mistake is one line on stderr
(`modelsieve: error: ...`, exit status 2), never a traceback, and leaves nothing half-written.

Real subprocesses where the CLI frame or a server process matters; real files and stores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsieve.api.cli import main
from modelsieve.fingerprint import synthetic as syn

MODELSIEVE = [sys.executable, "-c", "import sys; from modelsieve.api.cli import main; sys.exit(main(sys.argv[1:]))"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODELSIEVE, *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2 and every line on stderr a `modelsieve: error:` line naming the needles; no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("modelsieve: error: ") for line in lines), result.stderr
    assert all(needle in result.stderr for needle in needles), result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program listens on (without SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_taken_port_is_one_line_and_status_2(tmp_path: Path, taken_port: int, workers: str) -> None:
    result = cli("serve", "--port", str(taken_port), "--workers", workers, "--db", str(tmp_path / "store.db"))
    assert_one_line_error(result, f"cannot serve on 127.0.0.1:{taken_port}", "address already in use")


def test_serve_refuses_an_impossible_port_and_an_unopenable_audit_log(tmp_path: Path) -> None:
    result = cli("serve", "--port", "70000", "--db", str(tmp_path / "store.db"))
    assert result.returncode == 2 and "a port is 0-65535, not 70000" in result.stderr and "Traceback" not in result.stderr
    result = cli("serve", "--port", "0", "--audit-log", str(tmp_path), "--db", str(tmp_path / "store.db"))
    assert_one_line_error(result, f"cannot open the audit log {tmp_path}")


@pytest.mark.parametrize("command", [("list", "create", "reports"), ("trust", "list")])
def test_a_store_in_a_folder_that_does_not_exist_is_refused_not_created_empty(tmp_path: Path, command: tuple[str, ...]) -> None:
    """A typo in --db must not start a new, empty store (every lookup would answer "none")."""
    typo = tmp_path / "no-such-folder" / "sub" / "lists.db"
    result = cli(*command, "--db", str(typo))
    assert_one_line_error(result, f"cannot open the store at {typo}: no folder {typo.parent}")
    assert not (tmp_path / "no-such-folder").exists()


@pytest.mark.parametrize(
    "command",
    [("match", "--url", "https://example.org/"), ("list", "show"), ("list", "stats"), ("crawl", "links.txt", "--out", "recs.jsonl")],
)
def test_commands_that_look_things_up_never_start_an_empty_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """`match --db lists.bd` (a typo) made a new, empty store and answered "none" for everything."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "links.txt").write_text("https://example.org/a.safetensors\n")
    typo = tmp_path / "lists.bd"
    status, out, err = run(capsys, *command, "--db", str(typo))
    assert status == 2 and out == "" and err == f"modelsieve: error: no store at {typo}: check --db, or make one with `modelsieve list create`\n"
    assert not typo.exists() and not (tmp_path / "recs.jsonl").exists()


def test_a_new_store_file_in_an_existing_folder_is_still_created(tmp_path: Path) -> None:
    result = cli("list", "create", "reports", "--db", str(tmp_path / "new.db"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new.db").is_file()


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "lora.safetensors"
    family = syn.Family(7, syn.Architecture(scale=20, text_layers=2, vocab=300))
    syn.write_safetensors(path, syn.kohya_layout(family.lora(1), "fp16"))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("output", ["missing-folder/lora.msfp", "a-file/lora.msfp"])
def test_fingerprint_output_that_cannot_be_written_is_one_line_and_leaves_no_temp_file(
    lora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    (tmp_path / "a-file").write_bytes(b"not a folder")
    destination = tmp_path / output
    status, out, err = run(capsys, "fingerprint", str(lora), "-o", str(destination), "--db", str(tmp_path / "store.db"))
    assert status == 2 and out == "" and err.startswith(f"modelsieve: error: cannot save the fingerprint to {destination}: ")
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "store.db"]


def test_fingerprint_into_an_existing_folder_saves_inside_it(lora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "prints"
    folder.mkdir()
    status, out, err = run(capsys, "fingerprint", str(lora), "-o", str(folder), "--db", str(tmp_path / "store.db"))
    assert status == 0, err
    assert [p.name for p in folder.iterdir()] == ["lora.msfp"] and f"saved to {folder / 'lora.msfp'}" in out


@pytest.mark.parametrize("base", ["missing.safetensors", "empty-folder"])
def test_a_base_option_naming_no_model_is_one_line(lora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], base: str) -> None:
    (tmp_path / "empty-folder").mkdir()
    status, _, err = run(capsys, "fingerprint", str(lora), "--base", str(tmp_path / base), "--db", str(tmp_path / "store.db"))
    assert status == 2 and err.startswith(f"modelsieve: error: {tmp_path / base}: ") and len(err.splitlines()) == 1


def test_trust_add_given_a_private_key_never_prints_any_of_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "generate", "acme", "--dir", str(tmp_path))[0] == 0
    private = (tmp_path / "acme.key").read_text()
    secret_lines = [line for line in private.splitlines() if not line.startswith("-----")]
    status, out, err = run(capsys, "trust", "add", "acme", str(tmp_path / "acme.key"), "--level", "full", "--db", str(tmp_path / "store.db"))
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert "not a public key" in err and ".pub" in err
    # PKCS#8 puts 16 fixed bytes (22 base64 characters) before the secret seed: none of what follows may show
    assert all(line[22 + start : 30 + start] not in err for line in secret_lines for start in range(0, len(line) - 30)), err


def test_trust_add_with_a_missing_key_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "trust", "add", "acme", str(tmp_path / "acme.pub"), "--level", "full", "--db", str(tmp_path / "store.db"))
    assert status == 2 and err == f"modelsieve: error: {tmp_path / 'acme.pub'}: no such file (PUBKEY is a .pub file or 'ed25519:BASE64...')\n"


@pytest.mark.parametrize("name", ["", "a/b", "../up", "with space"])
def test_publisher_names_that_cannot_prefix_a_list_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert run(capsys, "keys", "generate", "acme", "--dir", str(tmp_path))[0] == 0
    status, _, err = run(capsys, "trust", "add", name, str(tmp_path / "acme.pub"), "--level", "full", "--db", str(tmp_path / "store.db"))
    assert status == 2 and "publisher names are" in err
    status, _, err = run(capsys, "keys", "generate", name, "--dir", str(tmp_path / "keys"))
    assert status == 2 and "publisher names are" in err
    assert not (tmp_path / "keys").exists()


def test_keys_generate_into_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_bytes(b"x")
    status, _, err = run(capsys, "keys", "generate", "acme", "--dir", str(tmp_path / "a-file"))
    assert status == 2 and err.startswith(f"modelsieve: error: cannot create the folder {tmp_path / 'a-file'}: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("serve", "--rate", "nan"), "argument --rate: must be positive, not nan"),
        (("serve", "--rate", "0"), "argument --rate: must be positive, not 0"),
        (("serve", "--burst", "0"), "argument --burst: must be at least 1, not 0"),
        (("serve", "--workers", "0"), "argument --workers: must be at least 1, not 0"),
        (("serve", "--crawl-jobs", "-1"), "argument --crawl-jobs: must not be negative, not -1"),
        (("list", "show", "reports", "--limit", "-1"), "argument --limit: must not be negative, not -1"),
        (("keys", "api", "create", "--scope", "lookup", "--rate", "nan"), "argument --rate: must be positive, not nan"),
        (("compare", "a", "b", "--threshold", "nan"), "a similarity threshold is above 0 and at most 1, not nan"),
        (("compare", "a", "b", "--threshold", "2"), "a similarity threshold is above 0 and at most 1, not 2"),
    ],
)
def test_numbers_that_make_no_sense_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str) -> None:
    """A NaN rate admitted everything and a rate of 0 was a traceback; a NaN threshold made every pair "no match"."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_crawl_of_a_binary_file_is_refused_before_a_job_starts(lora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model given where the URL list belongs was reported line by line, one junk line per ~100 bytes."""
    out = tmp_path / "recs.jsonl"
    status, _, err = run(capsys, "crawl", str(lora), "--out", str(out), "--db", str(tmp_path / "store.db"))
    assert status == 2 and err == f"modelsieve: error: {lora}: not a text file of URLs (it holds NUL bytes: a model file?)\n"
    assert not out.exists()


def test_crawl_into_an_unwritable_output_is_one_line_and_leaves_no_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = tmp_path / "links.txt"
    urls.write_text("https://example.org/a.safetensors\n")
    (tmp_path / "a-file").write_bytes(b"x")
    db = str(tmp_path / "store.db")
    assert run(capsys, "list", "create", "reports", "--db", db)[0] == 0
    out = tmp_path / "a-file" / "recs.jsonl"
    status, _, err = run(capsys, "crawl", str(urls), "--out", str(out), "--db", db)
    assert status == 2 and err.startswith(f"modelsieve: error: cannot write {out}: ") and len(err.splitlines()) == 1
    status, _, err = run(capsys, "crawl", str(urls), "--out", str(out), "--db", db)
    assert status == 2 and "cannot write" in err, "no half-made job may ask for --resume"
    status, _, err = run(capsys, "crawl", str(tmp_path), "--out", str(tmp_path / "x.jsonl"), "--db", db)
    assert status == 2 and err == f"modelsieve: error: {tmp_path}: a folder, not a file of URLs\n"


@pytest.mark.parametrize("command", [("hash",), ("inspect",), ("match",), ("fingerprint",)])
def test_a_folder_without_model_files_is_noted_not_silent(
    lora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    """`match downloads/` on a folder of .gguf files printed nothing at all, like a folder of models without a match."""
    empty = tmp_path / "downloads"
    empty.mkdir()
    (empty / "model.gguf").write_bytes(b"GGUF")
    db = ("--db", str(tmp_path / "store.db")) if command[0] in ("match", "fingerprint") else ()
    if db:
        assert run(capsys, "list", "create", "reports", *db)[0] == 0
    status, out, err = run(capsys, *command, str(empty), str(lora), "--json", *db)
    assert status == 0 and [json.loads(line)["path"] for line in out.splitlines()] == [str(lora)]
    assert err == f"modelsieve: {empty}: no model files in this folder (looked for .safetensors .ckpt .pt .pth .bin)\n"


def test_list_add_with_one_invalid_value_adds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It added the entries before the bad one and then exited 2, so a fixed re-run found them 'already listed'."""
    db = str(tmp_path / "store.db")
    assert run(capsys, "list", "create", "reports", "--db", db)[0] == 0
    status, out, err = run(capsys, "list", "add", "reports", "--sha256", "ab" * 32, "--url", "ftp://nudify.example/app", "--db", db)
    assert status == 2 and out == "" and err == "modelsieve: error: only http and https URLs can be listed: 'ftp://nudify.example/app'\n"
    assert run(capsys, "list", "show", "reports", "--db", db)[1] == ""
    status, out, _ = run(capsys, "list", "add", "reports", "--sha256", "ab" * 32, "--url", "https://nudify.example/app", "--db", db)
    assert status == 0 and [line.split()[0] for line in out.splitlines()] == ["added:", "added:"]


def test_a_domain_entry_lists_what_it_names_and_a_page_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--domain nudify.example.org` (the README's own example) listed every host of example.org, and
    `--domain t.me/somebot` (how nudify bots are named) all of t.me; `list import` did so without a word."""
    db = str(tmp_path / "store.db")
    assert run(capsys, "list", "create", "reports", "--db", db)[0] == 0
    status, out, err = run(capsys, "list", "add", "reports", "--domain", "www.undress.co.uk", "--domain", "https://t.me/somebot", "--db", db)
    assert (status, out) == (2, "")
    assert err == (
        "modelsieve: error: a domain entry lists a host and every host below it, not a page: 'https://t.me/somebot' "
        "would list all of t.me; give the page as a URL entry to list it and the pages below it\n"
    )
    status, out, err = run(capsys, "list", "add", "reports", "--domain", "nudify.example.org", "--domain", "www.undress.co.uk", "--db", db)
    assert status == 0 and err == "" and [line.split()[-1] for line in out.splitlines()] == ["nudify.example.org", "undress.co.uk"]
    status, out, _ = run(capsys, "match", "--url", "https://www.example.org/", "--url", "https://cdn.nudify.example.org/x", "--db", db, "--json")
    assert [json.loads(line)["verdict"] for line in out.splitlines()] == ["none", "exact"]


def test_a_base_registered_again_under_another_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With one model registered as 'sd15' and as '0sd15', deltas were taken against '0sd15' (first by
    name), and entries fingerprinted against 'sd15' no longer matched their own near-copies."""
    family = syn.Family(9, syn.Architecture(scale=20, text_layers=2, vocab=300))
    syn.write_safetensors(tmp_path / "base.safetensors", family.checkpoint(family.base))
    syn.write_safetensors(tmp_path / "base-fp16.safetensors", syn.resave(family.checkpoint(family.base), "fp16"))
    syn.write_safetensors(tmp_path / "tune.safetensors", family.fine_tune(1, 0.002))
    db = ("--db", str(tmp_path / "store.db"))
    assert run(capsys, "bases", "add", str(tmp_path / "base.safetensors"), "--name", "sd15", *db)[0] == 0
    status, _, err = run(capsys, "bases", "add", str(tmp_path / "base-fp16.safetensors"), "--name", "0sd15", *db)
    assert status == 2 and err.startswith(f"modelsieve: error: {tmp_path / 'base-fp16.safetensors'}: it is base 'sd15' again")
    assert run(capsys, "bases", "add", str(tmp_path / "base-fp16.safetensors"), "--name", "sd15", "--replace", *db)[0] == 0
    assert run(capsys, "bases", "add", str(tmp_path / "tune.safetensors"), "--name", "tune", *db)[0] == 0, "a fine-tune may be a base"
    assert [line.split()[0] for line in run(capsys, "bases", "list", *db)[1].splitlines()] == ["sd15", "tune"]


def test_demo_never_replaces_what_an_earlier_demo_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --output DIR` deleted DIR/zoo and DIR/modelsieve.db whatever they held (e.g. the real store's folder)."""
    real = tmp_path / "real"
    real.mkdir()
    assert run(capsys, "list", "create", "reports", "--db", str(real / "modelsieve.db"))[0] == 0
    status, _, err = run(capsys, "demo", "--output", str(real))
    assert status == 2 and err == f"modelsieve: error: {real / 'modelsieve.db'} holds lists the demo did not make (reports): choose another --output\n"
    assert run(capsys, "list", "show", "--db", str(real / "modelsieve.db"))[1].startswith("reports")
    (tmp_path / "work" / "zoo").mkdir(parents=True)
    (tmp_path / "work" / "zoo" / "notes.txt").write_text("mine")
    status, _, err = run(capsys, "demo", "--output", str(tmp_path / "work"))
    assert status == 2 and "zoo holds files the demo did not make (notes.txt)" in err
    assert (tmp_path / "work" / "zoo" / "notes.txt").read_text() == "mine"
    (tmp_path / "a-file").write_bytes(b"x")
    status, _, err = run(capsys, "demo", "--output", str(tmp_path / "a-file"))
    assert status == 2 and err.startswith(f"modelsieve: error: {tmp_path / 'a-file'}: not a folder")


@pytest.mark.parametrize("command", ["inspect", "fingerprint"])
def test_a_fifo_given_as_a_model_is_refused_without_waiting_for_a_writer(tmp_path: Path, command: str) -> None:
    """Opening a FIFO nobody writes to blocked forever; a pipe could not be re-read after the format sniff."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    store = ["--db", str(tmp_path / "store.db")] if command == "fingerprint" else []
    result = subprocess.run([*MODELSIEVE, command, str(fifo), *store], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr == f"modelsieve: {fifo}: not a regular file (a pipe or a device?): models are read from files\n"


@pytest.mark.parametrize("command", ["hash", "match"])
def test_an_endless_device_given_as_a_model_is_refused_at_once(tmp_path: Path, command: str) -> None:
    """`modelsieve hash /dev/zero` (and `match`, which hashes first) read forever."""
    store = ["--db", str(tmp_path / "store.db")] if command == "match" else []
    if store:
        assert main(["list", "create", "reports", *store]) == 0
    result = subprocess.run([*MODELSIEVE, command, "/dev/zero", *store], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr == "modelsieve: /dev/zero: a device, not a file: only files and pipes are hashed\n"


def test_background_members_that_are_no_change_to_the_base_are_refused_one_by_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The base itself (zero change) was accepted as a cohort member and made the estimates more
    confident (review → action on the demo zoo); a member of another base refused the whole batch."""
    arch = syn.Architecture(scale=20, text_layers=2, vocab=300)
    family, other = syn.Family(11, arch), syn.Family(12, arch)
    files = {
        "base.safetensors": family.checkpoint(family.base),
        "base-fp16.safetensors": syn.resave(family.checkpoint(family.base), "fp16"),
        "tune.safetensors": family.fine_tune(1, 0.002),
        "other-base.safetensors": other.checkpoint(other.base),
        "other-tune.safetensors": other.fine_tune(1, 0.01),
    }
    for name, tensors in files.items():
        syn.write_safetensors(tmp_path / name, tensors)
    db = ("--db", str(tmp_path / "store.db"))
    for base in ("base", "other-base"):
        assert run(capsys, "bases", "add", str(tmp_path / f"{base}.safetensors"), "--name", base, *db)[0] == 0
    members = [str(tmp_path / n) for n in ("base.safetensors", "base-fp16.safetensors", "tune.safetensors", "other-tune.safetensors")]
    status, out, err = run(capsys, "bases", "add-background", *members, "--base", "base", *db)
    assert status == 1 and out.startswith("added 1 background models to base 'base'")
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0] == f"modelsieve: {members[0]}: it is base 'base' itself (relative change 0.0e+00), not a fine-tune of it"
    assert lines[1].startswith(f"modelsieve: {members[1]}: it is base 'base' itself (relative change ") and lines[1].endswith("not a fine-tune of it")
    assert lines[2] == f"modelsieve: {members[3]}: it is a change to base 'other-base', not 'base'"
    assert [line.split()[-2] for line in run(capsys, "bases", "list-background", "--base", "base", *db)[1].splitlines()] == ["tune.safetensors"]


def test_serve_with_an_unreadable_fingerprint_key_stops_at_start(tmp_path: Path) -> None:
    """It started anyway, logged a traceback and answered 503 "not ready" for ever."""
    result = cli("serve", "--port", "0", "--fingerprint-key", str(tmp_path / "team.fpkey"), "--db", str(tmp_path / "store.db"))
    assert_one_line_error(result, f"cannot read the fingerprint key file {tmp_path / 'team.fpkey'}")


def test_a_public_key_given_for_signing_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The .pub file (mode 0644) was refused as 'readable by others; chmod 600 it', which invites making it 0600."""
    assert run(capsys, "keys", "generate", "acme", "--dir", str(tmp_path))[0] == 0
    result = cli("serve", "--port", "0", "--publisher-key", str(tmp_path / "acme.pub"), "--db", str(tmp_path / "store.db"))
    assert_one_line_error(result, f"{tmp_path / 'acme.pub'} is a public key: signing needs the private NAME.key file")


def test_serve_with_an_unusable_crawl_jobs_folder_stops_at_start(tmp_path: Path) -> None:
    """It started, and every crawl job submitted then failed with a 500."""
    (tmp_path / "a-file").write_bytes(b"x")
    folder = tmp_path / "a-file" / "jobs"
    result = cli("serve", "--port", "0", "--crawl-jobs-dir", str(folder), "--db", str(tmp_path / "store.db"))
    assert_one_line_error(result, f"cannot use the crawl jobs folder {folder}: Not a directory")


def test_keys_generate_never_overwrites_a_public_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A partner's acme.pub in the folder was replaced by the new key's (only the .key was protected)."""
    partner = "ed25519:" + "A" * 43 + "=\n"
    (tmp_path / "acme.pub").write_text(partner)
    status, _, err = run(capsys, "keys", "generate", "acme", "--dir", str(tmp_path))
    assert status == 2 and err == f"modelsieve: error: {tmp_path / 'acme.pub'} exists already; a key is never overwritten\n"
    assert (tmp_path / "acme.pub").read_text() == partner and not (tmp_path / "acme.key").exists()


def test_trust_add_never_swaps_a_publishers_key_unasked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `trust add NAME` with another key silently replaced the key bundles are verified with."""
    db = ("--db", str(tmp_path / "store.db"))
    old, new = (json.loads(run(capsys, "keys", "generate", name, "--dir", str(tmp_path), "--json")[1]) for name in ("acme", "acme-2027"))
    assert run(capsys, "trust", "add", "acme", old["public_key_file"], "--level", "full", *db)[0] == 0
    status, _, err = run(capsys, "trust", "add", "acme", new["public_key_file"], "--level", "full", *db)
    assert status == 2 and f"acme is trusted with key {old['key_id']}, not {new['key_id']}: add --replace" in err
    assert run(capsys, "trust", "add", "acme", old["public_key_file"], "--level", "review", *db)[0] == 0, "the same key: a level change"
    assert run(capsys, "trust", "add", "acme", new["public_key_file"], "--level", "full", "--replace", *db)[0] == 0
    [trusted] = [json.loads(line) for line in run(capsys, "trust", "list", "--json", *db)[1].splitlines()]
    assert (trusted["key_id"], trusted["level"]) == (new["key_id"], "full")


def test_a_crawl_whose_output_was_deleted_points_to_the_way_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Deleting recs.jsonl to start again met 'add --resume' and then 'cannot be resumed', and nothing else."""
    db = ("--db", str(tmp_path / "store.db"))
    assert run(capsys, "list", "create", "reports", *db)[0] == 0
    urls = tmp_path / "links.txt"
    urls.write_text("# nothing to fetch yet\n")
    out = tmp_path / "recs.jsonl"
    assert run(capsys, "crawl", str(urls), "--out", str(out), *db)[0] == 0
    out.unlink()
    for resume in ((), ("--resume",)):
        status, _, err = run(capsys, "crawl", str(urls), "--out", str(out), *resume, *db)
        assert status == 2 and err.rstrip().endswith("choose another --out") and "add --resume" not in err


def test_a_walk_skips_a_fifo_instead_of_waiting_on_it(lora: Path, tmp_path: Path) -> None:
    """`hash downloads/` with a FIFO named *.safetensors among the models blocked for ever."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    os.mkfifo(folder / "a.safetensors")
    (folder / "b.safetensors").write_bytes(lora.read_bytes())
    result = subprocess.run([*MODELSIEVE, "hash", "--json", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(folder / "b.safetensors")]
    assert result.stderr == f"modelsieve: {folder / 'a.safetensors'}: not a regular file, skipped\n"


def test_a_broken_saved_fingerprint_is_named_in_the_error(lora: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'not a modelsieve fingerprint (bad magic)' did not say which of compare's two inputs it was."""
    broken = tmp_path / "listed.msfp"
    broken.write_bytes(b"MSFP-not-really")
    status, _, err = run(capsys, "compare", str(lora), str(broken), "--db", str(tmp_path / "store.db"))
    assert status == 2 and err.startswith(f"modelsieve: error: {broken}: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["trust-add", "list-export"])
def test_key_files_that_are_fifos_or_huge_are_refused_without_reading_them(tmp_path: Path, command: str) -> None:
    """A FIFO given as a key blocked for ever (nobody writes to it); any file was read whole."""
    store = ["--db", str(tmp_path / "store.db")]
    assert cli("list", "create", "main", *store).returncode == 0

    def given_as_key(path: Path) -> subprocess.CompletedProcess[str]:
        if command == "trust-add":
            return cli("trust", "add", "acme", str(path), "--level", "full", *store)
        return cli("list", "export", "main", "--key", str(path), "-o", str(tmp_path / "out.jsonl"), *store)

    fifo, huge = tmp_path / "key.fifo", tmp_path / "huge.key"
    os.mkfifo(fifo)
    with open(huge, "wb") as handle:  # sparse: 2 GiB that a whole read would pull into memory
        handle.truncate(2**31)
    huge.chmod(0o600)
    assert_one_line_error(given_as_key(fifo), f"{fifo}: not a regular file")
    assert_one_line_error(given_as_key(huge), f"{huge} is over 64 KiB")
