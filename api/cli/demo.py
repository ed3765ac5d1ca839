"""`modelsieve demo`: the main job end to end, on a synthetic zoo, with no network.

It runs the same commands a platform would (`bases add`, `list create`, `list add`, `crawl`),
printing each, against a store in the output folder: a base model is registered, two stand-ins
for harmful models are listed, a loopback file host serves the zoo, and the crawl recommends
what to delist, with evidence. Every weight is random; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from modelsieve.api.cli.common import add_json_flag, command_parser, print_json_line
from modelsieve.api.demo.filehost import serve_folder
from modelsieve.api.demo.zoo import ZooModel, build_zoo
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.store import open_store

EXAMPLES = """\
examples:
  modelsieve demo                       # everything in ./modelsieve-demo
  modelsieve demo --output /tmp/demo    # elsewhere
  modelsieve demo --json | jq .action   # the recommendations as JSON Lines
"""

LIST_NAME = "demo-2c"
BASE_NAME = "sd15-synthetic"
# what the demo writes into its folder, and so removes before a new run
DEMO_FILES = ("zoo", "modelsieve.db", "modelsieve.db-wal", "modelsieve.db-shm", "urls.txt", "recommendations.jsonl")


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "demo",
        "run the main job end to end on a synthetic zoo (no network)",
        "Generate a synthetic model zoo (a base; two listed stand-ins for harmful models, a\n"
        "fine-tune and a LoRA; their near-copies; independent benign models), register the base,\n"
        "list the two, serve the zoo from a loopback file host, crawl it as a search engine's\n"
        "delisting job would, and print the recommendations with their evidence. Every weight is\n"
        "random and nothing is downloaded. The store stays in the output folder, so the API can be\n"
        "started against it afterwards.",
        EXAMPLES,
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        type=Path,
        default=Path("modelsieve-demo"),
        help="folder for the zoo, the store and the recommendations (default: ./modelsieve-demo; "
        "files of an earlier demo run there are replaced)",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _fresh_folder(folder: Path) -> None:
    """Empty the demo's files out of `folder`, refusing when they look like someone's own work."""
    if folder.exists() and not folder.is_dir():
        raise ModelsieveError(f"{folder}: not a folder (--output names the folder for the demo's files)")
    _check_demo_made(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (folder / "zoo").mkdir()


def _check_demo_made(folder: Path) -> None:
    """An earlier demo run's zoo holds only .safetensors files and its store only the demo list;
    anything else there (e.g. --output pointed at the real store's folder) is not replaced."""
    zoo, db = folder / "zoo", folder / "modelsieve.db"
    if zoo.is_dir():
        foreign = sorted(p.name for p in zoo.iterdir() if not (p.is_file() and p.suffix == ".safetensors"))
    else:
        foreign = [zoo.name] if zoo.exists() else []
    if foreign:
        raise ModelsieveError(f"{zoo} holds files the demo did not make ({', '.join(foreign[:3])}): choose another --output")
    if db.exists():
        with open_store(db) as store:
            lists = sorted(info.name for info in store.lists() if info.name != LIST_NAME)
        if lists:
            raise ModelsieveError(f"{db} holds lists the demo did not make ({', '.join(lists[:3])}): choose another --output")


def _step(argv: list[str], *, quiet: bool) -> list[dict[str, Any]]:
    """Run one `modelsieve` command in process (with --json) and return its JSON lines."""
    from modelsieve.api.cli import main  # the frame imports this module: import it lazily

    if not quiet:
        print(f"  $ modelsieve {shlex.join(argv)}", file=sys.stderr)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        status = main([*argv, "--json"])
    if status != 0:
        raise ModelsieveError(f"demo step `modelsieve {shlex.join(argv)}` failed (exit {status})")
    return [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]


def _evidence(recommendation: dict[str, Any]) -> str:
    """The strongest match of a recommendation, in a few words."""
    matches = recommendation.get("evidence", {}).get("matches") or []
    if not matches:
        return recommendation.get("reason", "")
    best = matches[0]
    parts = [f"{best.get('kind')} match", f"entry {str(best.get('entry_id'))[:8]}", f"score {best.get('score'):.3f}"]
    if best.get("coefficient") is not None and best.get("kind") == "fuzzy":
        parts.append(f"coef {best['coefficient']:.2f}")
    return ", ".join(parts) + _share_read(recommendation)


def _share_read(recommendation: dict[str, Any]) -> str:
    """"; read 5.7 % of the file" when the crawler judged a file from part of its bytes."""
    evidence = recommendation.get("evidence", {})
    size, read = (evidence.get("file") or {}).get("size"), evidence.get("bytes_read")
    if not size or read is None or read >= size:
        return ""
    return f"; read {100 * read / size:.1f} % of the file"


def _print_table(models: list[ZooModel], recommendations: dict[str, dict[str, Any]]) -> None:
    rows = [("file", "what it is", "action", "evidence")]
    for model in models:
        rec = recommendations[model.filename]
        rows.append((model.filename, f"{model.role}: {model.description}", rec["action"], _evidence(rec)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for index, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths) + "  " + "-" * 8)


def run(args: argparse.Namespace) -> int:
    folder: Path = args.output.resolve()
    quiet = args.json
    _fresh_folder(folder)
    db = str(folder / "modelsieve.db")
    if not quiet:
        print(f"modelsieve demo: a synthetic zoo of random weights in {folder} (nothing downloaded)\n", file=sys.stderr)
    base, models = build_zoo(folder / "zoo")
    zoo = folder / "zoo"
    if not quiet:
        print("1. register the public base, create a list and list the two stand-ins for harmful models:", file=sys.stderr)
    _step(["bases", "add", str(zoo / base.filename), "--name", BASE_NAME, "--db", db], quiet=quiet)
    _step(["list", "create", LIST_NAME, "--publisher", "modelsieve-demo", "--db", db], quiet=quiet)
    for model in (m for m in models if m.listed):
        kind = "lora" if "lora" in model.filename else "checkpoint"
        _step(
            ["list", "add", LIST_NAME, str(zoo / model.filename), "--category", "2c", "--kind", kind,
             "--source", "demo-hotline", "--db", db],
            quiet=quiet,
        )
    crawled = [base, *models]
    with serve_folder(zoo) as url:
        (folder / "urls.txt").write_text("".join(f"{url}{model.filename}\n" for model in crawled))
        if not quiet:
            print(f"\n2. serve the zoo at {url} and crawl it as a search engine's delisting job:", file=sys.stderr)
        _step(
            ["crawl", str(folder / "urls.txt"), "--out", str(folder / "recommendations.jsonl"), "--mode", "search",
             "--allow-loopback", "--db", db],
            quiet=quiet,
        )
    lines = (folder / "recommendations.jsonl").read_text().splitlines()
    by_file = {json.loads(line)["url"].rsplit("/", 1)[1]: json.loads(line) for line in lines if line.strip()}
    if quiet:
        for model in crawled:
            print_json_line({"file": model.filename, "role": model.role, **by_file[model.filename]})
        return 0
    print("\n3. recommendations (\"none\" means no list matched, never \"clean\"):\n")
    _print_table(crawled, by_file)
    print(
        "\nCheckpoints are judged from the few per cent of their bytes a partial fingerprint needs (HTTP Range\n"
        "reads), so no whole-file digest exists for them and even a byte-identical copy matches by its\n"
        "fingerprint; files read whole, such as small LoRAs, are hashed as well.\n"
        f"\nFull evidence: {folder / 'recommendations.jsonl'}\n"
        "Start the HTTP API against the same store:\n"
        f"  modelsieve keys api create --scope lookup --db {db}\n"
        f"  modelsieve serve --db {db}\n"
        "  curl -H 'Authorization: Bearer <key>' "
        f"'http://127.0.0.1:8080/v1/lookup?sha256=<a sha256 from the evidence>'"
    )
    return 0
