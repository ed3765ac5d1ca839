"""The HTTP API (aiohttp): lookups and matches for hubs, crawl jobs for delisting, list exchange.

Start it with `modelsieve serve`, or build the application yourself:

    from modelsieve.api.http import ApiConfig, create_app
    web.run_app(create_app(ApiConfig(db_path="modelsieve.db")), host="127.0.0.1", port=8080)
"""

from modelsieve.api.http.app import create_app
from modelsieve.api.http.config import ApiConfig

__all__ = ["ApiConfig", "create_app"]
