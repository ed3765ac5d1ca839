"""Provider adapters: what a host publishes about a linked file, behind one small interface.

Hub adapters answer from metadata the hub already serves (no download): a Hugging-Face-style
hub's LFS sha256 from a `/resolve/` HEAD, a Civitai-style model-version API's file hashes. The
generic adapter claims every other URL and publishes nothing, so the content check reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from yarl import URL

from modelsieve.crawler.fetch import Fetcher, Transcript


@dataclass(frozen=True)
class Published:
    """What a provider says about the file behind a URL: where its bytes are and their digests."""

    provider: str
    download_url: str
    source: str  # the URL the claims came from (API answer, HEAD response)
    digests: Mapping[str, str] = field(default_factory=dict)  # digest name → hex, as the host publishes them
    size: int | None = None
    file_name: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "source": self.source,
            "download_url": self.download_url,
            "digests": dict(self.digests),
            "size": self.size,
            "file_name": self.file_name,
        }


class Provider(Protocol):
    """One kind of host."""

    name: str

    def claims(self, url: URL) -> bool:
        """Whether this adapter knows how to ask the URL's host about it."""

    async def published(self, url: URL, fetcher: Fetcher, transcript: Transcript) -> Published:
        """What the host publishes about the file (raises FetchError when it cannot be asked)."""


def wire_hosts(hosts: Sequence[str]) -> frozenset[str]:
    """Host names as URLs carry them on the wire (lower-case, IDNA-encoded), to compare with `URL.raw_host`."""
    return frozenset(URL.build(scheme="http", host=host).raw_host or "" for host in hosts)


def provider_for(url: URL, providers: Sequence[Provider]) -> Provider:
    """The first provider that claims `url` (the generic adapter, last, claims everything)."""
    for provider in providers:
        if provider.claims(url):
            return provider
    raise LookupError(f"no provider claims {url}")
