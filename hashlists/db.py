"""Opening the embedded SQLite store: where it lives and how connections are configured."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import sqlite_utils

from modelsieve.fingerprint.errors import ModelsieveError

DB_ENV = "MODELSIEVE_DB"


def default_db_path() -> Path:
    """`$MODELSIEVE_DB`, else `$XDG_DATA_HOME/modelsieve/modelsieve.db` (~/.local/share/...)."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV])
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "modelsieve" / "modelsieve.db"


def open_database(path: str | os.PathLike[str] | None = None) -> sqlite_utils.Database:
    """A SQLite database in WAL mode (readers never block the writer), with foreign keys on."""
    if path is not None and os.fspath(path).startswith(("postgresql://", "postgres://")):
        raise ModelsieveError(
            "this command keeps tables of its own (API keys, crawl jobs or fingerprint bases) in the "
            "SQLite store only; give it a SQLite --db (lists on PostgreSQL: see `modelsieve list`, `match`)"
        )
    target = Path(path) if path is not None else default_db_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(target, timeout=30, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA synchronous=NORMAL")
    except (OSError, sqlite3.Error) as exc:
        raise ModelsieveError(f"cannot open the store at {target}: {exc}") from None
    return sqlite_utils.Database(connection)
