"""Provider adapters against a fake Hugging-Face-style hub and a fake Civitai-style API on loopback."""

from __future__ import annotations

import hashlib
import json

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from modelsieve.crawler.fetch import FetchConfig, FetchError, Fetcher, Transcript
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.providers import provider_for
from modelsieve.crawler.providers.civitai import CivitaiProvider, choose_file, civitai_digests, version_id
from modelsieve.crawler.providers.generic import GenericProvider
from modelsieve.crawler.providers.huggingface import HuggingFaceProvider, linked_sha256, resolve_url
from tests.crawler_fakes import LOG, fake_civitai, fake_hub, synthetic_safetensors

MODEL = synthetic_safetensors(seed=7)
SHA256 = hashlib.sha256(MODEL).hexdigest()
HOSTS = {"hub.test": ["127.0.0.1"], "civitai.test": ["127.0.0.1"]}
PROVIDERS = (HuggingFaceProvider(("hub.test",)), CivitaiProvider(("civitai.test",)), GenericProvider())


async def resolve(host: str, port: int) -> list[str]:
    return HOSTS[host]


def fetcher() -> Fetcher:
    return Fetcher(FetchConfig(), address_policy=AddressPolicy(allow_loopback=True), resolve=resolve)


async def test_the_hub_adapter_reads_the_lfs_sha256_without_downloading(aiohttp_server) -> None:
    server = await aiohttp_server(fake_hub({"acme/model/unet.safetensors": MODEL, "acme/model/README.md": b"# hi"}))
    url = URL(f"http://hub.test:{server.port}/acme/model/blob/main/unet.safetensors")
    provider = provider_for(url, PROVIDERS)
    transcript = Transcript()
    async with fetcher() as client:
        published = await provider.published(url, client, transcript)
        readme = await provider.published(URL(f"http://hub.test:{server.port}/acme/model/resolve/main/README.md"), client, Transcript())
    assert provider.name == "huggingface"
    assert published.digests == {"sha256": SHA256} and published.size == len(MODEL)
    assert published.download_url.endswith("/acme/model/resolve/main/unet.safetensors")
    assert [e.method for e in transcript.exchanges] == ["HEAD"]
    assert transcript.exchanges[0].headers["x-linked-etag"] == f'"{SHA256}"'
    assert server.app[LOG].hits.get("/cdn/acme/model/unet.safetensors", 0) == 0
    assert readme.digests == {}  # a git ETag is no file digest


async def test_the_civitai_adapter_reads_published_hashes_for_download_and_page_links(aiohttp_server) -> None:
    server = await aiohttp_server(fake_civitai({"4242": ("cute.safetensors", MODEL)}))
    links = [
        f"http://civitai.test:{server.port}/api/download/models/4242",
        f"http://civitai.test:{server.port}/models/17/some-name?modelVersionId=4242",
        f"http://civitai.test:{server.port}/api/download/models/4242?type=Model&format=SafeTensor",
    ]
    async with fetcher() as client:
        for link in links:
            url = URL(link)
            provider = provider_for(url, PROVIDERS)
            assert provider.name == "civitai"
            published = await provider.published(url, client, Transcript())
            assert published.digests["sha256"] == SHA256
            assert published.digests["autov2"] == SHA256[:10]
            assert published.file_name == "cute.safetensors"
            assert published.size == len(MODEL)
            assert URL(published.download_url).path == "/api/download/models/4242"
    assert server.app[LOG].hits.get("/files/4242", 0) == 0


async def test_the_civitai_adapter_reports_a_missing_version(aiohttp_server) -> None:
    server = await aiohttp_server(fake_civitai({}))
    url = URL(f"http://civitai.test:{server.port}/api/download/models/1")
    async with fetcher() as client:
        with pytest.raises(FetchError, match="404"):
            await CivitaiProvider(("civitai.test",)).published(url, client, Transcript())


def test_urls_go_to_the_right_adapter() -> None:
    assert provider_for(URL("https://huggingface.co/a/b/resolve/main/x.safetensors"), (HuggingFaceProvider(), GenericProvider())).name == "huggingface"
    assert provider_for(URL("https://huggingface.co/a/b"), (HuggingFaceProvider(), GenericProvider())).name == "generic"
    assert provider_for(URL("https://civitai.com/models/5"), (CivitaiProvider(), GenericProvider())).name == "generic"
    assert version_id(URL("https://civitai.com/api/download/models/99")) == "99"
    assert version_id(URL("https://civitai.com/models/5/x?modelVersionId=12")) == "12"
    assert version_id(URL("https://civitai.com/models/5/x?modelVersionId=abc")) is None
    assert version_id(URL("https://civitai.com/models/5/x?modelVersionId=%C2%B2")) is None  # "²" is no digit
    assert resolve_url(URL("https://huggingface.co/a/b/blob/main/sub/x.safetensors?download=1")) == URL(
        "https://huggingface.co/a/b/resolve/main/sub/x.safetensors"
    )


def test_linked_etags_are_read_strictly() -> None:
    assert linked_sha256(f'"{SHA256.upper()}"') == SHA256
    assert linked_sha256(f'W/"{SHA256}"') == SHA256
    assert linked_sha256('"0123abcd"') is None
    assert linked_sha256(None) is None


def test_choose_file_by_type_and_format() -> None:
    files = [{"type": "Config", "metadata": {"format": "Other"}}, {"type": "Model", "primary": True, "metadata": {"format": "PickleTensor"}}, {"type": "Model", "metadata": {"format": "SafeTensor"}}]
    assert choose_file(files, URL("https://c/api/download/models/1")) is files[1]
    assert choose_file(files, URL("https://c/api/download/models/1?type=Model&format=SafeTensor")) is files[2]
    with pytest.raises(FetchError):
        choose_file(files, URL("https://c/api/download/models/1?type=VAE"))
    with pytest.raises(FetchError):
        choose_file([], URL("https://c/api/download/models/1"))


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=20,
)
HASH_NAMES = st.sampled_from(["SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3", "sha256", "md5"])


@given(st.one_of(JSON, st.dictionaries(HASH_NAMES, st.one_of(st.text("0123456789abcdefABCDEF", max_size=70), JSON))))
@settings(max_examples=150, deadline=None)
def test_civitai_hashes_keep_only_well_formed_values(hashes: object) -> None:
    digests = civitai_digests(hashes)
    lengths = {"autov1": {8}, "autov2": {10}, "autov3": {12, 64}, "sha256": {64}, "crc32": {8}, "blake3": {64}}
    for name, value in digests.items():
        assert len(value) in lengths[name]
        int(value, 16)
        assert value == (value.upper() if name == "crc32" else value.lower())


@given(JSON)
@settings(max_examples=100, deadline=None)
def test_civitai_file_lists_of_any_shape_never_crash(files: object) -> None:
    try:
        chosen = choose_file(files, URL("https://c/api/download/models/1?format=SafeTensor"))
    except FetchError:
        return
    assert chosen in files  # type: ignore[operator]
    json.dumps(chosen)


ANSWERS = web.AppKey("answers", dict)  # version id → raw JSON text


async def raw_version(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[ANSWERS][request.match_info["id"]], content_type="application/json")


HOSTILE_FILES = {  # each a well-formed answer whose file entry a hostile or broken API fills with junk
    "1": '{"files": [{"primary": true, "sizeKB": 1e308, "hashes": {"SHA256": "%s"}}]}' % SHA256,
    "2": '{"files": [{"primary": true, "sizeKB": -5, "name": 7, "downloadUrl": 9, "hashes": {"SHA256": "%s"}}]}' % SHA256,
    "3": '{"files": [{"primary": true, "sizeKB": 1e999, "downloadUrl": "http://[::1", "hashes": {"SHA256": "%s"}}]}' % SHA256,
    "4": '{"files": [{"primary": true, "sizeKB": true, "downloadUrl": "", "hashes": {"SHA256": "%s"}}]}' % SHA256,
}


@pytest.mark.parametrize("version", sorted(HOSTILE_FILES))
async def test_junk_in_a_civitai_file_entry_costs_only_that_field(aiohttp_server, version: str) -> None:
    app = web.Application()
    app[ANSWERS] = HOSTILE_FILES
    app.router.add_get("/api/v1/model-versions/{id}", raw_version)
    server = await aiohttp_server(app)
    link = URL.build(scheme="http", host="civitai.test", port=server.port, path=f"/api/download/models/{version}")
    async with fetcher() as client:
        published = await CivitaiProvider(("civitai.test",)).published(link, client, Transcript())
    assert published.digests == {"sha256": SHA256}
    assert published.size is None and published.file_name is None
    assert published.download_url == str(link)


async def test_a_civitai_answer_python_cannot_parse_is_a_fetch_error(aiohttp_server) -> None:
    app = web.Application()
    app[ANSWERS] = {"5": '{"id": %s, "files": []}' % ("9" * 5000), "6": '{"files": [' * 100_000}
    app.router.add_get("/api/v1/model-versions/{id}", raw_version)
    server = await aiohttp_server(app)
    async with fetcher() as client:
        for version in ("5", "6"):
            link = URL.build(scheme="http", host="civitai.test", port=server.port, path=f"/api/download/models/{version}")
            with pytest.raises(FetchError, match="not JSON"):
                await CivitaiProvider(("civitai.test",)).published(link, client, Transcript())
