"""The crawl core end to end: a real store and Matcher, fake hub / API / file host on loopback."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from modelsieve.crawler.crawl import CrawlConfig, Crawler
from modelsieve.crawler.fetch import FetchConfig
from modelsieve.crawler.lookup import StoreLookup
from modelsieve.crawler.model import CrawlTarget, Recommendation
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.policy import HOTLINE_NOTE, PolicyConfig
from modelsieve.crawler.politeness import PolitenessConfig
from modelsieve.crawler.providers.civitai import CivitaiProvider
from modelsieve.crawler.providers.generic import GenericProvider
from modelsieve.crawler.providers.huggingface import HuggingFaceProvider
from modelsieve.crawler.safetensors_remote import RemoteReadConfig
from modelsieve.fingerprint import synthetic
from modelsieve.fingerprint.fuzzy import fingerprint_tensors
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.crawler_fakes import FILES, LOG, fake_civitai, fake_hub, file_host, serve_range, synthetic_safetensors

LISTED = synthetic_safetensors(seed=11, tensors=6, width=32)  # random weights standing in for a listed 2c model
REVIEW = synthetic_safetensors(seed=12, tensors=6, width=32)  # listed as 2a
UNLISTED = synthetic_safetensors(seed=13, tensors=6, width=32)
FAMILY = synthetic.Family(seed=3)  # a scaled-down SD-1.5-like base with random weights
LISTED_LORA = FAMILY.lora(1, rank=8)


def lora_file(lora: synthetic.LoraFactors, dtype: str) -> bytes:
    from safetensors.numpy import save

    return save(dict(synthetic.kohya_layout(lora, dtype)))
DIGEST_LISTED_LORA = lora_file(FAMILY.lora(4, rank=8), "fp16")


HOSTS = {"files.test": ["127.0.0.1"], "hub.test": ["127.0.0.1"], "civitai.test": ["127.0.0.1"], "private.test": ["10.1.1.1"]}
PROVIDERS = (HuggingFaceProvider(("hub.test",)), CivitaiProvider(("civitai.test",)), GenericProvider())


async def resolve(host: str, port: int) -> list[str]:
    return HOSTS[host]  # any other name (e.g. the listed nudify service) must never be asked for


@pytest.fixture
def lookup(tmp_path: Path) -> StoreLookup:
    store = SQLiteStore(tmp_path / "store.db")
    store.create_list("demo", publisher="test-hotline")
    store.add_entry("demo", NewEntry(category="2c", kind="checkpoint", digests={"sha256": hashlib.sha256(LISTED).hexdigest()}, source="synthetic test entry"))
    store.add_entry("demo", NewEntry(category="2a", kind="checkpoint", digests={"sha256": hashlib.sha256(REVIEW).hexdigest()}, source="synthetic 2a entry"))
    listed_fingerprint = fingerprint_tensors(synthetic.kohya_layout(LISTED_LORA, "fp32"))
    store.add_entry("demo", NewEntry(category="2c", kind="lora", fingerprint=listed_fingerprint.to_bytes(), evidence="fuzzy", source="synthetic LoRA entry"))
    digest = hashlib.sha256(DIGEST_LISTED_LORA).hexdigest()
    store.add_entry("demo", NewEntry(category="2c", kind="lora", digests={"sha256": digest}, source="digest-only entry"))
    store.add_entry("demo", NewEntry(category="nudify-service", kind="service", domain="example.org", source="service report", evidence="osint-report"))
    return StoreLookup(Matcher(store, refresh_interval=0))


def crawler(lookup: StoreLookup, mode: str = "search") -> Crawler:
    config = CrawlConfig(
        fetch=FetchConfig(backoff_base=0.01, max_retries=1),
        policy=PolicyConfig(mode=mode),  # type: ignore[arg-type]
        addresses=AddressPolicy(allow_loopback=True),
        providers=PROVIDERS,
    )
    return Crawler(lookup, config, resolve=resolve)


async def check(lookup: StoreLookup, url: str, mode: str = "search") -> Recommendation:
    async with crawler(lookup, mode) as client:
        return await client.check(CrawlTarget(url))


def decisive_entry(recommendation: Recommendation) -> dict:
    record = recommendation.to_json()
    assert record["evidence"]["matches"], record
    return record["evidence"]["matches"][0]


async def test_a_listed_file_on_a_plain_host_is_delisted_with_its_evidence(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(file_host({"x": LISTED}))
    recommendation = await check(lookup, f"http://files.test:{server.port}/norange/x")
    record = recommendation.to_json()
    assert record["action"] == "delist"
    assert set(record) == {"url", "final_url", "action", "reason", "evidence", "checked_at"}
    match = decisive_entry(recommendation)
    assert (match["list"], match["category"], match["source"], match["kind"], match["score"]) == ("demo", "2c", "synthetic test entry", "sha256", 1.0)
    evidence = record["evidence"]
    assert evidence["basis"] == "content"
    assert evidence["digests"]["sha256"] == hashlib.sha256(LISTED).hexdigest()
    assert evidence["response"]["status"] == 200 and evidence["file"]["size"] == len(LISTED)
    assert evidence["bytes_read"] == len(LISTED) and evidence["requests"][0]["headers"]["content-length"] == str(len(LISTED))
    assert [(r["url"], r["status"], r["allowed"], r["rule"]) for r in evidence["robots"]] == [
        (f"http://files.test:{server.port}/norange/x", 404, True, "no robots.txt (status 404): everything allowed")
    ]
    assert evidence["started_at"] <= evidence["finished_at"] == record["checked_at"]


async def test_hosts_get_takedown_with_the_hotline_note(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(file_host({"x": LISTED}))
    recommendation = await check(lookup, f"http://files.test:{server.port}/files/x", mode="host")
    assert recommendation.action == "takedown" and HOTLINE_NOTE in recommendation.reason


async def test_the_hub_answers_from_its_published_sha256_without_a_download(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(fake_hub({"acme/tune/model.safetensors": LISTED}))
    recommendation = await check(lookup, f"http://hub.test:{server.port}/acme/tune/blob/main/model.safetensors")
    record = recommendation.to_json()
    assert record["action"] == "delist" and record["evidence"]["basis"] == "published"
    assert record["evidence"]["provider"]["provider"] == "huggingface"
    assert record["evidence"]["bytes_read"] == 0
    assert server.app[LOG].hits.get("/cdn/acme/tune/model.safetensors", 0) == 0


async def test_the_civitai_api_answers_without_a_download(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(fake_civitai({"77": ("x.safetensors", LISTED), "78": ("y.safetensors", UNLISTED)}))
    listed = await check(lookup, f"http://civitai.test:{server.port}/api/download/models/77")
    assert listed.action == "delist" and listed.evidence.basis == "published"
    assert server.app[LOG].hits.get("/files/77", 0) == 0
    unlisted = await check(lookup, f"http://civitai.test:{server.port}/models/5?modelVersionId=78")
    assert unlisted.action == "none" and unlisted.evidence.provider["digests"]["sha256"] == hashlib.sha256(UNLISTED).hexdigest()
    assert unlisted.final_url.endswith("/files/78")  # published digests did not match: the file itself was read


async def test_other_categories_go_to_review_and_unlisted_files_to_none(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(file_host({"y": REVIEW, "z": UNLISTED}))
    review = await check(lookup, f"http://files.test:{server.port}/files/y")
    none = await check(lookup, f"http://files.test:{server.port}/files/z")
    assert review.action == "review" and "2a" in review.reason
    assert none.action == "none" and not none.evidence.matches and "clean" not in none.reason
    assert none.evidence.file["format"] == "safetensors" and none.evidence.file["read"] == "ranges"


async def test_a_listed_nudify_domain_is_delisted_without_any_request(lookup) -> None:
    recommendation = await check(lookup, "https://app.example.org/generate?x=1")
    assert recommendation.action == "delist" and recommendation.evidence.basis == "url"
    assert decisive_entry(recommendation)["kind"] == "domain"
    assert recommendation.evidence.requests == [] and recommendation.final_url is None


async def test_failures_become_error_recommendations_with_the_reason(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(file_host({"x": LISTED}, robots=(200, "User-agent: *\nDisallow: /files/\n")))
    robots = await check(lookup, f"http://files.test:{server.port}/files/x")
    assert robots.action == "error" and "robots.txt" in robots.reason
    assert robots.to_json()["evidence"]["robots"] == [
        {
            "robots_url": f"http://files.test:{server.port}/robots.txt",
            "status": 200,
            "fetched_at": robots.evidence.robots[0]["fetched_at"],
            "url": f"http://files.test:{server.port}/files/x",
            "allowed": False,
            "rule": "Disallow: /files/",
        }
    ]
    private = await check(lookup, f"http://private.test:{server.port}/files/x")
    assert private.action == "error" and "10.1.1.1" in private.reason
    loop = await check(lookup, f"http://files.test:{server.port}/loop")
    assert loop.action == "error" and "redirects" in loop.reason and len(loop.evidence.requests) == 6
    missing = await check(lookup, f"http://files.test:{server.port}/nothing")
    assert missing.action == "error" and "404" in missing.reason
    for junk in ("http://[::1", "javascript:alert(1)", "http:///path"):
        refused = await check(lookup, junk)
        assert refused.action == "error" and refused.evidence.requests == [] and "unexpected" not in refused.reason


async def test_check_many_answers_every_target_once(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(file_host({"x": LISTED, "z": UNLISTED}))
    targets = [CrawlTarget(f"http://files.test:{server.port}/files/{name}?n={i}") for i in range(30) for name in ("x", "z")]
    async with crawler(lookup) as client:
        results = [r async for r in client.check_many(targets)]
    assert sorted(r.url for r in results) == sorted(t.url for t in targets)
    assert {r.action for r in results if "/x?" in r.url} == {"delist"}
    assert {r.action for r in results if "/z?" in r.url} == {"none"}


@pytest.mark.parametrize("route", ["files", "norange"])
async def test_a_resaved_copy_of_a_listed_lora_is_delisted_as_a_near_copy(aiohttp_server, lookup, route: str) -> None:
    resaved = lora_file(LISTED_LORA, "fp16")  # other bytes, other sha256: only the fingerprint can match
    other = lora_file(FAMILY.lora(2, rank=8), "fp16")
    server = await aiohttp_server(file_host({"copy": resaved, "other": other}))
    near = await check(lookup, f"http://files.test:{server.port}/{route}/copy")
    match = decisive_entry(near)
    assert near.action == "delist", near.reason
    assert (match["kind"], match["category"], match["source"]) == ("fuzzy", "2c", "synthetic LoRA entry")
    assert match["score"] >= 0.9 and match["similarity"] > 0.9 and "near-copy" in near.reason
    assert near.evidence.basis == "content" and near.evidence.file["tensors_read"]
    unrelated = await check(lookup, f"http://files.test:{server.port}/{route}/other")
    assert unrelated.action == "none", unrelated.reason


async def test_a_redirect_to_a_listed_domain_is_delisted_before_it_is_requested(aiohttp_server, lookup) -> None:
    server = await aiohttp_server(file_host({"x": UNLISTED}))
    start = f"http://files.test:{server.port}/to?target=https://app.example.org/generate"
    recommendation = await check(lookup, start)  # resolve() refuses app.example.org: it must never be asked for
    assert recommendation.action == "delist", recommendation.reason
    assert recommendation.evidence.basis == "url" and decisive_entry(recommendation)["kind"] == "domain"
    assert [r["url"] for r in recommendation.evidence.requests] == [start]
    assert recommendation.final_url == "https://app.example.org/generate"  # where the link leads: the listed service
    assert server.app[LOG].hits["/to"] == 1


async def gzipped_handler(request: web.Request) -> web.StreamResponse:
    """Ignores Range and Accept-Encoding: identity; sends the file gzip-encoded, as a browser would accept it."""
    data = request.app[FILES][request.match_info["name"]]
    return web.Response(body=gzip.compress(data), headers={"Content-Encoding": request.query.get("as", "gzip")})


@pytest.mark.parametrize("encoding", ["gzip", "br", "x-unknown"])
async def test_an_encoded_body_is_never_hashed_as_if_it_were_the_file(aiohttp_server, lookup, encoding: str) -> None:
    """Digests of the encoded bytes would answer none for a listed file every browser downloads decoded."""
    app = file_host({"x": LISTED})
    app.router.add_get("/gzipped/{name}", gzipped_handler)
    server = await aiohttp_server(app)
    recommendation = await check(lookup, f"http://files.test:{server.port}/gzipped/x?as={encoding}")
    assert recommendation.action == "error" and encoding in recommendation.reason, recommendation.reason
    assert recommendation.evidence.digests == {}
    assert recommendation.evidence.response["headers"]["content-encoding"] == encoding


async def raw_host_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers once with header bytes that are not UTF-8 (aiohttp hands them over as lone surrogates)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "\xff\xfe"\r\nContent-Type: text/\xe9\r\n\r\nhello')
    await writer.drain()
    writer.close()


async def test_header_bytes_that_are_not_utf8_never_break_the_output_line(lookup) -> None:
    """Such a header crashed the job writer on every resume: one hostile URL stopped the whole crawl."""
    server = await asyncio.start_server(raw_host_handler, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        recommendation = await check(lookup, f"http://files.test:{port}/x")
    line = recommendation.to_json_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line.decode("utf-8"))  # strict UTF-8, one JSON record
    assert record["evidence"]["response"]["headers"]["content-type"] == "text/\\xe9"  # the byte stays visible
    assert record["evidence"]["response"]["headers"]["etag"] == '"\\xff\\xfe"'


def test_a_recommendation_with_text_that_is_not_unicode_still_makes_one_line() -> None:
    from modelsieve.crawler.model import Evidence

    evidence = Evidence(started_at="t", finished_at="t", provider={"file_name": "m\ud800.safetensors"})
    recommendation = Recommendation("http://a.test/\udcff", None, "error", "bad \udc80 reason", evidence, "t", {"k\ud83d": ["\udfff"]})
    record = json.loads(recommendation.to_json_line().decode("utf-8"))
    assert record["url"] == "http://a.test/\\xff" and record["reason"] == "bad \\x80 reason"  # undecodable bytes
    assert record["context"] == {"k\\ud83d": ["\\udfff"]} and record["evidence"]["provider"]["file_name"] == "m\\ud800.safetensors"


async def test_a_file_read_whole_by_ranges_is_hashed_and_matches_a_digest_only_entry(aiohttp_server, lookup) -> None:
    """A small LoRA's fingerprint asks for every tensor, so its ranges cover the whole file: the
    crawler held every byte of a file listed by sha256 alone and answered none."""
    listed_lora = DIGEST_LISTED_LORA  # no fingerprint entry for it: only its digest is listed
    server = await aiohttp_server(file_host({"l": listed_lora}))
    recommendation = await check(lookup, f"http://files.test:{server.port}/files/l")
    evidence = recommendation.evidence
    assert evidence.file["read"] == "ranges" and evidence.bytes_read == len(listed_lora)
    assert evidence.digests["sha256"] == hashlib.sha256(listed_lora).hexdigest()
    assert recommendation.action == "delist" and decisive_entry(recommendation)["source"] == "digest-only entry"


async def test_tensors_that_make_no_fingerprint_are_named_in_the_evidence_of_a_none(aiohttp_server, lookup) -> None:
    """A none after a fingerprint failed compared digests only; the evidence must not hide that."""
    tensors = dict(synthetic.kohya_layout(FAMILY.lora(5, rank=8), "fp32"))
    broken = {name: np.full_like(array, np.nan) if array.ndim > 1 else array for name, array in tensors.items()}
    from safetensors.numpy import save

    server = await aiohttp_server(file_host({"nan": save(broken), "fine": lora_file(FAMILY.lora(6, rank=8), "fp16")}))
    failed = await check(lookup, f"http://files.test:{server.port}/files/nan")
    assert failed.action == "none" and failed.evidence.file["tensors_read"]
    assert "NaN" in failed.evidence.file["fingerprint_problem"]
    made = await check(lookup, f"http://files.test:{server.port}/files/fine")
    assert made.action == "none" and made.evidence.file["tensors_read"] and made.evidence.file["fingerprint_problem"] is None


SLOW_RANGES = web.AppKey("slow_ranges", list)  # seconds a Range request past byte 0 waits before its answer


async def slow_range_handler(request: web.Request) -> web.StreamResponse:
    if not request.headers.get("Range", "bytes=0-").startswith("bytes=0-"):
        await asyncio.sleep(request.app[SLOW_RANGES][0])
    return serve_range(request, request.app[FILES][request.match_info["name"]])


class TwoApart:
    """A lookup whose fingerprint wants two tensors far apart (two Range reads) and matches nothing."""

    def match_url(self, url: str) -> list:
        return []

    def match_digests(self, digests: object) -> list:
        return []

    def select_tensors(self, infos, budget_fraction):  # noqa: ANN001, ANN201
        return [infos[0], infos[-1]]

    def match_tensors(self, header, arrays):  # noqa: ANN001, ANN201
        return []


async def test_a_host_ignoring_range_cannot_deadlock_the_tensor_slots(aiohttp_server) -> None:
    """A streamed download waited for a tensor slot while holding its request slot, and a ranged read
    held a tensor slot while waiting for a request slot: once each held what the other wanted, both
    waited until the check timeout, and with them every check needing either."""
    app = file_host({"x": UNLISTED, "big": synthetic_safetensors(seed=5, tensors=12, width=128)})
    app[SLOW_RANGES] = [0.3]
    app.router.add_get("/slow/{name}", slow_range_handler)
    server = await aiohttp_server(app)
    config = CrawlConfig(
        fetch=FetchConfig(honour_robots=False),
        politeness=PolitenessConfig(global_concurrency=1),
        remote=RemoteReadConfig(first_read=4096, coalesce_gap=0),
        addresses=AddressPolicy(allow_loopback=True),
        providers=PROVIDERS,
        check_timeout=5,
        tensor_concurrency=1,
    )
    async with Crawler(TwoApart(), config, resolve=resolve) as client:  # type: ignore[arg-type]
        ranged = asyncio.ensure_future(client.check(CrawlTarget(f"http://files.test:{server.port}/slow/big")))
        await asyncio.sleep(0.1)  # its first tensor read is in flight, holding the one tensor slot
        streamed = asyncio.ensure_future(client.check(CrawlTarget(f"http://files.test:{server.port}/norange/x")))
        results = await asyncio.gather(ranged, streamed)
    assert [r.action for r in results] == ["none", "none"], [r.reason for r in results]
    assert results[0].evidence.file["read"] == "ranges" and results[1].evidence.file["read"] == "whole"
