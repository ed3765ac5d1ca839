"""The generic adapter: any HTTP(S) URL; the host publishes nothing, the content check reads the file."""

from __future__ import annotations

from yarl import URL

from modelsieve.crawler.fetch import Fetcher, Transcript
from modelsieve.crawler.providers import Published


class GenericProvider:
    """Claims every URL; asks nothing of the host."""

    name = "generic"

    def claims(self, url: URL) -> bool:
        return True

    async def published(self, url: URL, fetcher: Fetcher, transcript: Transcript) -> Published:
        return Published(self.name, download_url=str(url), source=str(url))
