"""The HTTP API (aiohttp): lookups and matches for hubs, crawl jobs for delisting, list exchange.

Start it with `modelsieve serve`, or build the application yourself:

    from modelsieve.api.http import ApiConfig, create_app
    web.run_app(create_app(ApiConfig(db_path="modelsieve.db")), host="127.0.0.1", port=8080)
"""

from __future__ import annotations

from typing import Any

from modelsieve.api.http.config import ApiConfig

__all__ = ["ApiConfig", "create_app"]


def __getattr__(name: str) -> Any:
    """`create_app` imported on first use, so that importing a light part (e.g. `.auth` for
    `modelsieve keys api`) does not import aiohttp, the crawler and the matcher too."""
    if name == "create_app":
        from modelsieve.api.http.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
