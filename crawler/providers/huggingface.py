"""Hugging-Face-style hubs: a `/resolve/` HEAD answers with the LFS file's sha256 and size.

Such a hub serves `/{repo}/resolve/{revision}/{path}` (and shows it at `/blob/`); for an LFS file
the first response (before the redirect to the CDN) carries `X-Linked-Etag: "<sha256>"` and
`X-Linked-Size`. Small non-LFS files carry only a git ETag, which is no file digest.
"""

from __future__ import annotations

import re

from yarl import URL

from modelsieve.crawler.fetch import FetchError, Fetcher, Transcript, decimal
from modelsieve.crawler.providers import Published, wire_hosts

HF_HOSTS = ("huggingface.co", "hf.co")
_FILE_PATH = re.compile(r"^/(?:(?:datasets|spaces)/)?(?:[^/]+/)?[^/]+/(resolve|blob)/[^/]+/.+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def resolve_url(url: URL) -> URL:
    """The `/resolve/` form of a hub file URL (a `/blob/` page URL names the same file)."""
    match = _FILE_PATH.match(url.path)
    if match is None or match.group(1) == "resolve":
        return url.with_fragment(None)
    start, end = match.span(1)
    return url.with_path(url.path[:start] + "resolve" + url.path[end:], encoded=False).with_query(None).with_fragment(None)


def linked_sha256(etag: str | None) -> str | None:
    """The sha256 in an X-Linked-Etag value (quoted, maybe weak), or None when it holds none."""
    if not etag:
        return None
    value = etag.strip().removeprefix("W/").strip('"').lower()
    return value if _SHA256.match(value) else None


class HuggingFaceProvider:
    """Reads the LFS sha256 and size a Hugging-Face-style hub publishes for a file."""

    name = "huggingface"

    def __init__(self, hosts: tuple[str, ...] = HF_HOSTS) -> None:
        self.hosts = wire_hosts(hosts)

    def claims(self, url: URL) -> bool:
        return url.raw_host in self.hosts and _FILE_PATH.match(url.path) is not None

    async def published(self, url: URL, fetcher: Fetcher, transcript: Transcript) -> Published:
        target = resolve_url(url)
        async with fetcher.open(target, method="HEAD", transcript=transcript, follow_redirects=False) as response:
            if response.status >= 400:
                raise FetchError(f"{target}: HTTP status {response.status}")
            sha256 = linked_sha256(response.headers.get("X-Linked-Etag"))
            size = decimal(response.headers.get("X-Linked-Size")) if sha256 else None
        digests = {"sha256": sha256} if sha256 else {}
        return Published(
            self.name,
            download_url=str(target),
            source=str(target),
            digests=digests,
            size=size,
            file_name=target.name,
        )
