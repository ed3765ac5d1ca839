"""Where the store lives by default (`--db` / `$MODELSIEVE_DB`, else a SQLite file in the user data folder)."""

from __future__ import annotations

import os
from pathlib import Path

DB_ENV = "MODELSIEVE_DB"


def default_db_path() -> Path:
    """`$MODELSIEVE_DB`, else `$XDG_DATA_HOME/modelsieve/modelsieve.db` (~/.local/share/...)."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV])
    return user_data_dir() / "modelsieve.db"


def user_data_dir() -> Path:
    """`$XDG_DATA_HOME/modelsieve` (~/.local/share/modelsieve): the user's modelsieve files."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "modelsieve"
