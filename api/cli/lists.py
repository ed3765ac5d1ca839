"""`modelsieve list`: create lists, add and import entries, show, retract, dispute, export, stats."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from modelsieve.api.cli.common import (
    add_db_option,
    add_json_flag,
    command_parser,
    expand_paths,
    non_negative_int,
    print_json_line,
    progress,
    report_failure,
)
from modelsieve.fingerprint.digests import printed_digest
from modelsieve.fingerprint.fuzzy import load_key
from modelsieve.hashlists import bundles, curation
from modelsieve.hashlists.files import examine_file
from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.model import CATEGORIES, DIGEST_LENGTHS, ENTRY_KINDS, EVIDENCE_TYPES, Entry, NewEntry
from modelsieve.hashlists.parsers import FORMATS, Defaults, ParsedLine, detect_format, open_text, parse_entries
from modelsieve.hashlists.signing import load_private_key
from modelsieve.hashlists.store import Store, open_store

EXAMPLES = """\
examples:
  modelsieve list create reports --publisher example-trust-safety
  modelsieve list add reports --sha256 9f86d08...0a08 --category 2c --kind lora --note "title as reported"
  modelsieve list add reports --url https://nudify.example/app --domain nudify.example
  modelsieve list add reports reported-lora.safetensors --category 2c --source hotline-x
  modelsieve list import --list reports hashes.txt     # plain SHA-256 list, CSV or JSON Lines
  modelsieve list show reports --limit 20
  modelsieve list retract e3f1... --reason "false positive: benign model"
  modelsieve list stats --json
  modelsieve list export reports --key acme.key --since 0 -o reports-0.bundle
  modelsieve list import reports-0.bundle                # a partner's signed bundle
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "list",
        "manage lists of known-harmful models, URLs and domains",
        "Lists (\"banks\") hold entries: digests of model files (any of sha256, blake3, md5, sha1,\n"
        "crc32, autov1, autov2, autov3), fuzzy fingerprints, or URLs/domains of nudify services.\n"
        "Every change is an event with a sequence number (the audit log and the base of delta\n"
        "export). Notes are sensitive (titles can name victims): never shown unless asked for.",
        EXAMPLES,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    _register_create(actions)
    _register_add(actions)
    _register_import(actions)
    _register_show(actions)
    _register_export(actions)
    _register_judgement(actions, "retract", "retract own entries (false positives): they never match again")
    _register_judgement(actions, "dispute", "flag entries as suspected false positives (they match, flagged)")
    _register_stats(actions)


def _common(parser: argparse.ArgumentParser) -> None:
    add_db_option(parser)
    add_json_flag(parser)


def _entry_fields(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("entry fields")
    group.add_argument("--category", choices=CATEGORIES, help="safety category (default 2c; nudify-service for URLs/domains)")
    group.add_argument("--kind", choices=[k for k in ENTRY_KINDS if k != "service"], default="other")
    group.add_argument("--source", default="", help="organisation that reported it (default: the list's publisher)")
    group.add_argument("--evidence", choices=EVIDENCE_TYPES, help="exact-file, fuzzy or osint-report")
    group.add_argument("--first-seen", metavar="DATE", help="when the model was first seen (ISO 8601)")
    group.add_argument("--expires", metavar="DATE", help="the entry stops matching after this (ISO 8601)")
    group.add_argument("--note", help="sensitive free text; stored, never printed unless asked for")


# -- create ----------------------------------------------------------------------------------
def _register_create(actions: Any) -> None:
    parser = command_parser(
        actions,
        "create",
        "create a list",
        "Create an empty list. Its publisher is the organisation named in bundles exported from it.",
        "examples:\n  modelsieve list create reports --publisher example-trust-safety --description 'user reports'\n",
    )
    parser.add_argument("name", help="list name: letters, digits, '.', '_', '-'")
    parser.add_argument("--publisher", default="local", help="organisation publishing this list (default: local)")
    parser.add_argument("--description", default="")
    _common(parser)
    parser.set_defaults(handler=run_create)


def run_create(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        info = store.create_list(args.name, publisher=args.publisher, description=args.description)
    if args.json:
        print_json_line({"list": info.name, "publisher": info.publisher, "created": info.created})
    else:
        print(f"created list {info.name} (publisher {info.publisher})")
    return 0


# -- add -------------------------------------------------------------------------------------
def _register_add(actions: Any) -> None:
    parser = command_parser(
        actions,
        "add",
        "add entries: model files, digests, URLs or domains",
        "Add entries to a list. Each PATH is hashed (every digest) and fingerprinted: one entry\n"
        "per file, evidence exact-file. Digest options together describe ONE file that was never seen\n"
        "here (a hash-only entry); each --url and --domain is an entry of its own (category\n"
        "nudify-service). For many digests use `modelsieve list import`.",
        EXAMPLES,
    )
    parser.add_argument("list", help="the list to add to")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="model files to hash and fingerprint (one entry each)")
    parser.add_argument("--fingerprint-key", metavar="FILE", help="fingerprint key (default: $MODELSIEVE_FINGERPRINT_KEY or public)")
    digests = parser.add_argument_group("digests of one file (hash-only entry)")
    for name in DIGEST_LENGTHS:
        digests.add_argument(f"--{name}", metavar="HEX", help=f"{name} of the file")
    parser.add_argument("--url", action="append", default=[], help="a nudify service's URL (repeatable)")
    parser.add_argument("--domain", action="append", default=[], help="a nudify service's domain, e.g. nudify.example: it and every host below it are listed (repeatable)")
    _entry_fields(parser)
    _common(parser)
    parser.set_defaults(handler=run_add)


def _new_entries(args: argparse.Namespace, store: Store) -> list[NewEntry]:
    """The entries `list add` makes; files are fingerprinted as deltas from the store's registered bases."""
    fields = {
        "kind": args.kind,
        "source": args.source,
        "first_seen": args.first_seen,
        "expires": args.expires,
        "note": args.note,
    }
    digests = {name: getattr(args, name) for name in DIGEST_LENGTHS if getattr(args, name)}
    entries = []
    key = load_key(args.fingerprint_key)
    bases = store.bases(key)
    for path in expand_paths(args.paths):
        evidence = examine_file(path, key, bases)
        if evidence.problem:  # still listed, by its digests: say so, it is not a failure
            print(f"modelsieve: {path}: added by its digests only, {evidence.problem}", file=sys.stderr)
        kind = evidence.fingerprint.kind if evidence.fingerprint else args.kind
        fingerprint = evidence.fingerprint.to_bytes() if evidence.fingerprint else None
        entries.append(
            NewEntry(
                category=args.category or "2c",
                digests=evidence.digests,
                fingerprint=fingerprint,
                evidence=args.evidence or "exact-file",
                **{**fields, "kind": kind},
            )
        )
    if digests:
        entries.append(
            NewEntry(category=args.category or "2c", digests=digests, evidence=args.evidence or "osint-report", **fields)
        )
    for field, values in (("url", args.url), ("domain", args.domain)):
        entries += [
            NewEntry(category="nudify-service", evidence=args.evidence or "osint-report", **{field: v}, **fields)
            for v in values
        ]
    if not entries:
        raise InvalidEntryError("nothing to add: give model files, digests (e.g. --sha256 HEX), --url or --domain")
    return entries


def _print_entry_line(entry: Entry, *, added: bool, json_output: bool) -> None:
    if json_output:
        print_json_line({**entry.to_json(), "result": "added" if added else "already listed"})
        return
    what = entry.url or entry.domain or ", ".join(f"{n} {printed_digest(n, v)}" for n, v in entry.digests.items())
    result = "added" if added else "already listed" if entry.status == "active" else f"already listed, {entry.status}"
    final = " (a retracted entry never matches again)" if entry.status == "retracted" else ""
    print(f"{result}: {entry.id} {entry.category} {entry.kind} {what}{final}")


def run_add(args: argparse.Namespace) -> int:
    """Add every entry the options describe in one transaction: one invalid value adds none."""
    with open_store(args.db) as store:
        entries = _new_entries(args, store)
        with store.transaction():
            results = [(entry, store.add_entry(args.list, entry)) for entry in entries]
        for entry, stored in results:
            if stored is None:
                _print_existing(store, args.list, entry, json_output=args.json)
            else:
                _print_entry_line(stored, added=True, json_output=args.json)
                if stored.expired():
                    print(f"modelsieve: note: {stored.id} expired at {stored.expires}: it will never match", file=sys.stderr)
    return 0


def _print_existing(store: Store, list_name: str, entry: NewEntry, *, json_output: bool) -> None:
    valid = entry.validated()
    same = [e for e in store.find_digests(valid.digests) if e.list == list_name] if valid.digests else []
    if same:
        _print_entry_line(same[0], added=False, json_output=json_output)
    elif json_output:
        print_json_line({"list": list_name, "url": valid.url, "domain": valid.domain, "result": "already listed"})
    else:
        print(f"already listed in {list_name}: {valid.url or valid.domain}")


# -- import ----------------------------------------------------------------------------------
def _register_import(actions: Any) -> None:
    parser = command_parser(
        actions,
        "import",
        "import signed bundles, or hash lists (plain SHA-256, CSV, JSON Lines)",
        "Import files, each in one transaction. A signed bundle (`modelsieve list export`) goes\n"
        "into its publisher's list (PUBLISHER/LIST), verified against the key in the trust store;\n"
        "tampered, unsigned, unknown-publisher, replayed and out-of-order bundles are refused.\n"
        "Other files are hash lists for --list NAME. Formats: plain\n"
        "(one SHA-256 a line, sha256sum output too), CSV with a header naming digests (sha256,\n"
        "blake3, md5, sha1, crc32, autov1, autov2, autov3) and optional fields (category, kind,\n"
        "source, evidence, first_seen, expires, note, url, domain), or JSON Lines with the same\n"
        "keys. Bad lines are reported with their number; the rest is imported (exit status 1).\n"
        "Entries the list already holds are skipped, so importing a file twice adds nothing.",
        "examples:\n"
        "  modelsieve list import partner-reports-41-97.bundle\n"
        "  modelsieve list import --list reports hashes.txt\n"
        "  modelsieve list import --list reports civitai-export.csv --source civitai --category 2c\n"
        "  modelsieve list import --list reports entries.jsonl --json\n",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--list", "-l", metavar="NAME", help="the list to import hash lists into")
    parser.add_argument("--format", choices=("auto", "bundle", *FORMATS), default="auto", help="default: detected per file")
    _entry_fields(parser)
    _common(parser)
    parser.set_defaults(handler=run_import)


def _valid_only(parsed: Iterable[ParsedLine], path: str, rejected: list[int]) -> Iterator[NewEntry]:
    for number, result in parsed:
        if isinstance(result, InvalidEntryError):
            report_failure(path, result)
            rejected.append(number)
        else:
            yield result


def import_file(store: Store, list_name: str, path: str, *, format: str, defaults: Defaults, show_progress: bool) -> dict[str, Any]:
    """Import one hash-list file into a list in one transaction; the summary record."""
    with open_text(path, newline="") as stream:
        if format == "auto":
            first = next((line for line in iter(lambda: stream.readline(4096), "") if line.strip()), "")
            format = detect_format(first)
            stream.seek(0)
        rejected: list[int] = []
        entries = _valid_only(parse_entries(stream, format, defaults), path, rejected)
        valid = 0

        def counted() -> Iterator[NewEntry]:
            nonlocal valid
            for entry in progress(entries, total=None, unit=" entries", enabled=show_progress):
                valid += 1
                yield entry

        added = store.add_entries(list_name, counted())
    return {"file": path, "list": list_name, "format": format, "added": added, "already_listed": valid - added, "rejected": len(rejected)}


def run_import(args: argparse.Namespace) -> int:
    defaults = Defaults(
        category=args.category or "2c", kind=args.kind, source=args.source, evidence=args.evidence or "osint-report"
    )
    status = 0
    with open_store(args.db) as store:
        for path in args.files:
            if not Path(path).is_file():
                report_failure(path, InvalidEntryError("no such file"))
                status = 1
                continue
            if args.format == "bundle" or (args.format == "auto" and bundles.is_bundle(path)):
                _import_bundle(store, path, json_output=args.json)
                continue
            if args.list is None:
                raise InvalidEntryError(f"{path} is a hash list: say which list to import it into with --list NAME")
            store.get_list(args.list)
            summary = import_file(store, args.list, path, format=args.format, defaults=defaults, show_progress=not args.json)
            status = 1 if summary["rejected"] else status
            if args.json:
                print_json_line(summary)
            else:
                print(
                    f"{path}: {summary['added']} added to {args.list}, {summary['already_listed']} already listed, "
                    f"{summary['rejected']} lines rejected ({summary['format']})"
                )
    return status


def _import_bundle(store: Store, path: str, *, json_output: bool) -> None:
    report = bundles.import_bundle(store, path)
    if json_output:
        print_json_line({"file": path, **report.to_json()})
    elif report.type == "background":
        print(f"{path}: {report.background} background cohort models from {report.publisher} (those already held skipped)")
    elif report.type == "opinions":
        print(f"{path}: {report.opinions} opinions from {report.publisher} (seq {report.from_seq}..{report.to_seq})")
    else:
        print(
            f"{path}: {report.publisher}'s list {report.list}, seq {report.from_seq}..{report.to_seq}: "
            f"{report.entries} entries, {report.tombstones} tombstones applied"
        )


# -- export ----------------------------------------------------------------------------------
def _register_export(actions: Any) -> None:
    parser = command_parser(
        actions,
        "export",
        "write a signed bundle of a list's changes (or of your opinions)",
        "Write a bundle: the list's entries changed after --since SEQ (retracted ones as\n"
        "tombstones), a manifest (list, publisher, sequence range, counts, scheme versions) and\n"
        "an Ed25519 signature over it. Notes are left out unless --include-notes. With\n"
        "--opinions-for PUBLISHER: your disputes/confirmations of that publisher's entries,\n"
        "signed as --as NAME, for them to import. The format is described in the README.",
        "examples:\n"
        "  modelsieve list export reports --key acme.key -o reports-full.bundle\n"
        "  modelsieve list export reports --key acme.key --since 97 -o reports-97.bundle\n"
        "  modelsieve list export --opinions-for hotline-x --as acme --key acme.key -o to-hotline.bundle\n",
    )
    parser.add_argument("list", nargs="?", help="the list to export (one of this platform's own)")
    parser.add_argument("--key", required=True, metavar="FILE", help="your private key (modelsieve keys generate)")
    parser.add_argument("--since", type=int, default=0, metavar="SEQ", help="only changes after this sequence number")
    parser.add_argument("--out", "-o", required=True, type=Path, metavar="FILE", help="the bundle to write")
    parser.add_argument("--include-notes", action="store_true", help="include the sensitive notes")
    parser.add_argument("--opinions-for", metavar="PUBLISHER", help="export your opinions on PUBLISHER's entries")
    parser.add_argument("--as", dest="as_name", metavar="NAME", help="your publisher name (with --opinions-for)")
    _common(parser)
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    with open_store(args.db) as store:
        if args.opinions_for:
            if not args.as_name:
                raise InvalidEntryError("--opinions-for needs --as NAME: the name the publisher trusts you under")
            manifest = bundles.export_opinions(store, args.opinions_for, key, args.out, as_name=args.as_name, since=args.since)
        elif args.list:
            manifest = bundles.export_list(store, args.list, key, args.out, since=args.since, include_notes=args.include_notes)
        else:
            raise InvalidEntryError("name the list to export, or --opinions-for PUBLISHER")
    if args.json:
        print_json_line({"file": str(args.out), **manifest.to_json()})
    else:
        counts = ", ".join(f"{n} {k}" for k, n in manifest.counts.items() if n) or "no changes"
        print(f"{args.out}: {manifest.publisher}, seq {manifest.from_seq}..{manifest.to_seq}: {counts}")
    return 0


# -- show ------------------------------------------------------------------------------------
def _register_show(actions: Any) -> None:
    parser = command_parser(
        actions,
        "show",
        "show lists, a list's entries, or one entry",
        "Without a list: every list with its publisher and entry count. With a list: its entries,\n"
        "newest change last. With --entry: one entry. Notes only with --notes (they are sensitive).",
        "examples:\n  modelsieve list show\n  modelsieve list show reports --status disputed\n"
        "  modelsieve list show --entry e3f1... --notes\n",
    )
    parser.add_argument("list", nargs="?", help="the list whose entries to show")
    parser.add_argument("--entry", metavar="ID", help="show one entry")
    parser.add_argument("--status", choices=("active", "retracted", "disputed"), help="only entries with this status")
    parser.add_argument("--limit", type=non_negative_int, default=100, help="at most this many entries (default 100; 0: all)")
    parser.add_argument("--notes", action="store_true", help="include the sensitive notes")
    _common(parser)
    parser.set_defaults(handler=run_show)


def _describe(entry: Entry, *, notes: bool) -> str:
    what = entry.url or entry.domain or " ".join(f"{n}:{printed_digest(n, v)}" for n, v in entry.digests.items())
    fingerprint = " +fingerprint" if entry.fingerprint else ""
    origin = f" from {entry.origin}" if entry.origin else ""
    line = f"{entry.id} [{entry.status}] {entry.category} {entry.kind} {what}{fingerprint} (source {entry.source}{origin}, seq {entry.seq})"
    return f"{line}\n    note: {entry.note}" if notes and entry.note else line


def run_show(args: argparse.Namespace) -> int:
    with open_store(args.db, existing=True) as store:
        if args.entry:
            entries: Iterable[Entry] = [store.get_entry(args.entry)]
        elif args.list:
            store.get_list(args.list)
            entries = (e for e in store.entries(args.list) if args.status in (None, e.status))
        else:
            for info in store.lists():
                count = store.counts(info.name)["entries"]
                if args.json:
                    print_json_line({"list": info.name, "publisher": info.publisher, "origin_list": info.origin_list, "description": info.description, "entries": count})
                else:
                    origin = f" (imported: {info.publisher}'s {info.origin_list})" if info.imported else ""
                    print(f"{info.name}: {count} entries, publisher {info.publisher}{origin}")
            return 0
        for shown, entry in enumerate(entries):
            if args.limit and shown >= args.limit:
                print("... (more; raise --limit)", file=sys.stderr)
                break
            if args.json:
                print_json_line(entry.to_json(include_note=args.notes))
            else:
                print(_describe(entry, notes=args.notes))
    return 0


# -- retract / dispute -----------------------------------------------------------------------
def _register_judgement(actions: Any, name: str, summary: str) -> None:
    detail = {
        "retract": "Retract entries of this platform's own lists, e.g. false positives. Retracted entries\n"
        "never match; the retraction travels to importers as a tombstone in the next bundle.",
        "dispute": "Flag entries as suspected false positives. They keep matching with status \"disputed\"\n"
        "so a person reviews them. Disputes of imported entries are opinions you can export to\n"
        "their publisher (`modelsieve list export --opinions-for PUBLISHER`). --confirm lifts a dispute.",
    }[name]
    parser = command_parser(
        actions, name, summary, detail, f"examples:\n  modelsieve list {name} e3f1c0... --reason 'benign model, same base'\n"
    )
    parser.add_argument("entries", nargs="+", metavar="ENTRY_ID")
    parser.add_argument("--reason", default="", help="why (kept in the event log)")
    if name == "dispute":
        parser.add_argument("--confirm", action="store_true", help="confirm the entries instead (lifts a dispute)")
        parser.add_argument("--by", default="local", help="who holds this opinion (default: local)")
    _common(parser)
    parser.set_defaults(handler=run_judgement, action=name)


def run_judgement(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        for entry_id in args.entries:
            if args.action == "retract":
                entry = curation.retract(store, entry_id, reason=args.reason)
            elif args.confirm:
                entry = curation.confirm(store, entry_id, reason=args.reason, by=args.by)
            else:
                entry = curation.dispute(store, entry_id, reason=args.reason, by=args.by)
            if args.json:
                print_json_line({"entry_id": entry.id, "list": entry.list, "status": entry.status, "seq": entry.seq})
            else:
                print(f"{entry.id}: {entry.status}")
    return 0


# -- stats -----------------------------------------------------------------------------------
def _register_stats(actions: Any) -> None:
    parser = command_parser(
        actions,
        "stats",
        "count entries by status, kind, category and digest",
        "Count the entries of one list, or of all lists, and give the store's latest sequence number.",
        "examples:\n  modelsieve list stats\n  modelsieve list stats reports --json\n",
    )
    parser.add_argument("list", nargs="?")
    _common(parser)
    parser.set_defaults(handler=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    with open_store(args.db, existing=True) as store:
        if args.list:
            store.get_list(args.list)
        counts = store.counts(args.list)
        record = {"list": args.list, "last_seq": store.last_seq(), **counts}
    if args.json:
        print_json_line(record)
        return 0
    print(f"{args.list or 'all lists'}: {counts['entries']} entries (store at seq {record['last_seq']})")
    for key, value in counts.items():
        if ":" in key and value:
            print(f"  {key:24} {value}")
    if counts["expired"]:
        print(f"  {'expired (no longer match)':24} {counts['expired']}")
    return 0
