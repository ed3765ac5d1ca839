"""Civitai-style hubs: the model-version API lists each file's hashes, so no file is downloaded.

Download links look like `/api/download/models/{versionId}` (optionally `?type=&format=`) and
model pages like `/models/{modelId}?modelVersionId={versionId}`; the adapter asks
`/api/v1/model-versions/{versionId}` and reads `files[].hashes` (AutoV1, AutoV2, AutoV3, SHA256,
CRC32, BLAKE3) of the file the link names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from yarl import URL

from modelsieve.crawler.fetch import FetchError, Fetcher, Transcript, decimal
from modelsieve.crawler.providers import Published, wire_hosts

CIVITAI_HOSTS = ("civitai.com",)
API_ANSWER_BYTES = 4 * 1024 * 1024
_DOWNLOAD_PATH = re.compile(r"^/api/download/models/(\d+)/?$")
_MODEL_PAGE = re.compile(r"^/models/\d+(?:/[^/]*)?/?$")
# Civitai's hash names → ours, with the hex lengths Civitai publishes for each.
_HASH_LENGTHS = {"autov1": (8,), "autov2": (10,), "autov3": (12, 64), "sha256": (64,), "crc32": (8,), "blake3": (64,)}
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def version_id(url: URL) -> str | None:
    """The model-version id a Civitai-style link names, or None."""
    match = _DOWNLOAD_PATH.match(url.path)
    if match:
        return match.group(1)
    version = url.query.get("modelVersionId", "")
    return version if _MODEL_PAGE.match(url.path) and decimal(version) is not None else None


def civitai_digests(hashes: object) -> dict[str, str]:
    """Our digest names → values from a `hashes` object; unknown names and malformed values dropped."""
    if not isinstance(hashes, Mapping):
        return {}
    digests = {}
    for key, value in hashes.items():
        name = str(key).lower()
        if name in _HASH_LENGTHS and isinstance(value, str) and len(value) in _HASH_LENGTHS[name] and _HEX.match(value):
            digests[name] = value.upper() if name == "crc32" else value.lower()
    return digests


def choose_file(files: object, url: URL) -> Mapping[str, Any]:
    """The file entry a link names: by ?type=/&format= when given, else the primary, else the first."""
    if not isinstance(files, list) or not all(isinstance(f, Mapping) for f in files) or not files:
        raise FetchError(f"{url}: the model-version answer lists no files")
    wanted = {k: url.query[k].lower() for k in ("type", "format") if k in url.query}
    if wanted:
        for entry in files:
            metadata = entry.get("metadata") if isinstance(entry.get("metadata"), Mapping) else {}
            if all(str(entry.get(k, metadata.get(k, ""))).lower() == v for k, v in wanted.items()):
                return entry
        raise FetchError(f"{url}: no file of {wanted} in the model version")
    return next((f for f in files if f.get("primary") is True), files[0])


class CivitaiProvider:
    """Reads the file hashes a Civitai-style model-version API publishes."""

    name = "civitai"

    def __init__(self, hosts: tuple[str, ...] = CIVITAI_HOSTS) -> None:
        self.hosts = wire_hosts(hosts)

    def claims(self, url: URL) -> bool:
        return url.raw_host in self.hosts and version_id(url) is not None

    async def published(self, url: URL, fetcher: Fetcher, transcript: Transcript) -> Published:
        api = url.with_path(f"/api/v1/model-versions/{version_id(url)}", encoded=False).with_query(None).with_fragment(None)
        response, body = await fetcher.get_small(api, transcript=transcript, limit=API_ANSWER_BYTES)
        if response.status != 200:
            raise FetchError(f"{api}: HTTP status {response.status}")
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):  # bad UTF-8, bad JSON, an integer past the digit limit
            raise FetchError(f"{api}: the answer is not JSON") from None
        if not isinstance(answer, Mapping):
            raise FetchError(f"{api}: the answer is not a JSON object")
        entry = choose_file(answer.get("files"), url)
        name = entry.get("name")
        return Published(
            self.name,
            download_url=_download_url(api, entry.get("downloadUrl"), url),
            source=str(api),
            digests=civitai_digests(entry.get("hashes")),
            size=_size_bytes(entry.get("sizeKB")),
            file_name=name if isinstance(name, str) else None,
        )


def _download_url(api: URL, published: object, link: URL) -> str:
    """The file's download URL as the API gives it (relative ones against the API), else the link."""
    if isinstance(published, str) and published:
        try:
            return str(api.join(URL(published)))
        except ValueError:
            pass
    return str(link)


def _size_bytes(size_kb: object) -> int | None:
    """Bytes from Civitai's `sizeKB` (a float of KiB); None when absent or not a sane number."""
    if isinstance(size_kb, bool) or not isinstance(size_kb, int | float):
        return None
    size = float(size_kb) * 1024  # in floats: a finite sizeKB near the limit still overflows here
    return round(size) if math.isfinite(size) and size >= 0 else None
