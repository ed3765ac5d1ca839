"""Remote safetensors reads: ranged header + selected tensors, Range-ignoring hosts, liars, caps."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load

from modelsieve.crawler.fetch import FetchConfig, FetchError, Fetcher, Transcript
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.politeness import HostGate, PolitenessConfig
from modelsieve.crawler.safetensors_remote import RemoteReadConfig, coalesce, download, read_remote
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.readers.base import TensorInfo
from tests.crawler_fakes import LIE_KINDS, LIES, LOG, file_host, serve_in_thread, synthetic_safetensors

MODEL = synthetic_safetensors(seed=1, tensors=12, width=64)
TENSORS = load(MODEL)
PICKED = ("model.diffusion_model.block_03.weight", "model.diffusion_model.block_04.weight", "model.diffusion_model.block_09.weight")
FAST = FetchConfig(honour_robots=False, backoff_base=0.01, backoff_max=0.02, max_retries=1)


def pick(infos: Sequence[TensorInfo], budget_fraction: float) -> list[TensorInfo]:
    return [info for info in infos if info.name in PICKED]


def fetcher() -> Fetcher:
    return Fetcher(FAST, gate=HostGate(PolitenessConfig()), address_policy=AddressPolicy(allow_loopback=True))


def assert_picked_arrays(arrays: dict[str, np.ndarray]) -> None:
    assert sorted(arrays) == sorted(PICKED)
    for name in PICKED:
        np.testing.assert_array_equal(arrays[name], TENSORS[name])
        assert arrays[name].dtype == TENSORS[name].dtype


async def test_ranged_read_fetches_the_header_and_only_the_selected_tensors(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": MODEL}))
    transcript = Transcript()
    config = RemoteReadConfig(first_read=1024, coalesce_gap=0)
    async with fetcher() as client:
        content = await read_remote(client, server.make_url("/files/m"), transcript, pick, config)
    assert content.ranged and content.file_size == len(MODEL) and content.problem is None
    assert {s.info.name for s in content.header.spans} == set(TENSORS)
    assert_picked_arrays(dict(content.arrays))
    picked_bytes = sum(TENSORS[n].nbytes for n in PICKED)
    assert transcript.bytes_read <= 1024 + content.header.header_length + picked_bytes
    assert all(e.status == 206 and e.request_range for e in transcript.exchanges)
    # blocks 03 and 04 lie side by side in the file only if the writer put them so; either way
    # every request is one coalesced range of wanted tensors
    assert len(transcript.exchanges) <= 1 + 1 + len(PICKED)


async def test_adjacent_tensors_are_fetched_in_one_request(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": MODEL}))
    transcript = Transcript()
    async with fetcher() as client:
        content = await read_remote(
            client, server.make_url("/files/m"), transcript, lambda infos, budget: list(infos), RemoteReadConfig(first_read=256)
        )
    assert len(content.arrays) == len(TENSORS)
    data_requests = [e for e in transcript.exchanges if e.request_range != "bytes=0-255"]
    assert len(data_requests) == 2  # the rest of the header, then every tensor as one range


async def test_a_host_ignoring_range_is_streamed_once_with_digests_and_tensors(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": MODEL}))
    transcript = Transcript()
    async with fetcher() as client:
        content = await read_remote(client, server.make_url("/norange/m"), transcript, pick)
    assert not content.ranged and content.problem is None
    assert content.digests["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert_picked_arrays(dict(content.arrays))
    assert transcript.bytes_read == len(MODEL) and len(transcript.exchanges) == 1


async def test_a_truncated_file_fails_header_validation_and_is_hashed_whole(aiohttp_server) -> None:
    cut = MODEL[:-100]
    server = await aiohttp_server(file_host({"m": cut}))
    async with fetcher() as client:
        content = await read_remote(client, server.make_url("/files/m"), Transcript(), pick)
    assert content.header is None and "truncated" in content.problem
    assert content.digests["sha256"] == hashlib.sha256(cut).hexdigest()


async def test_files_that_are_not_safetensors_are_hashed_whole(aiohttp_server) -> None:
    pickle_like = b"\x80\x02}q\x00." + bytes(range(256)) * 40
    server = await aiohttp_server(file_host({"m": pickle_like}))
    async with fetcher() as client:
        ranged = await read_remote(client, server.make_url("/files/m"), Transcript(), pick)
        streamed = await read_remote(client, server.make_url("/norange/m"), Transcript(), pick)
    for content in (ranged, streamed):
        assert content.header is None and content.problem
        assert content.digests["sha256"] == hashlib.sha256(pickle_like).hexdigest()


async def test_a_hostile_header_length_is_refused_like_a_local_file(aiohttp_server) -> None:
    hostile = (2**40).to_bytes(8, "little") + b"{}"
    server = await aiohttp_server(file_host({"m": hostile}))
    transcript = Transcript()
    async with fetcher() as client:
        content = await read_remote(client, server.make_url("/files/m"), transcript, pick)
    assert content.header is None and "exceeds" in content.problem
    assert transcript.bytes_read < 100  # nothing of the claimed terabyte was asked for



async def test_a_streamed_download_holds_a_capture_slot_while_it_captures(aiohttp_server) -> None:
    """A Range-ignoring host's download may hold many tensors: it counts against the caller's slots."""
    server = await aiohttp_server(file_host({"m": MODEL}))
    slots = asyncio.Semaphore(1)
    held_while_selecting: list[bool] = []

    def pick_noting_the_slot(infos: Sequence[TensorInfo], budget_fraction: float) -> list[TensorInfo]:
        held_while_selecting.append(slots.locked())  # the selection runs mid-stream, once the header has passed
        return pick(infos, budget_fraction)

    async with fetcher() as client:
        content = await read_remote(client, server.make_url("/norange/m"), Transcript(), pick_noting_the_slot, capture_slots=slots)
        assert held_while_selecting == [True] and not slots.locked()  # taken for the capture, given back after
        assert_picked_arrays(dict(content.arrays))


async def test_a_lying_content_length_in_a_download_is_an_error(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": MODEL}))
    async with fetcher() as client:
        with pytest.raises(FetchError, match="truncated"):
            await download(client, server.make_url("/lying/m"), Transcript(), pick)


async def test_the_download_cap_stops_a_large_body(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": MODEL}))
    async with fetcher() as client:
        with pytest.raises(FetchError, match="download cap"):
            await download(client, server.make_url("/norange/m"), Transcript(), pick, RemoteReadConfig(max_download_bytes=1000))
        with pytest.raises(FetchError, match="download cap"):
            await download(client, server.make_url("/big?size=3000000"), Transcript(), pick, RemoteReadConfig(max_download_bytes=1_000_000))


async def test_a_selection_over_the_byte_cap_is_refused(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": MODEL}))
    async with fetcher() as client:
        with pytest.raises(FetchError, match="more than the cap"):
            await read_remote(client, server.make_url("/files/m"), Transcript(), lambda infos, budget: list(infos), RemoteReadConfig(max_selected_bytes=100))


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 500)), max_size=30), st.integers(0, 200))
@settings(max_examples=200, deadline=None)
def test_coalesce_covers_exactly_the_ranges_plus_small_gaps(raw: list[tuple[int, int]], gap: int) -> None:
    ranges = [(begin, begin + length) for begin, length in raw]
    merged = coalesce(ranges, gap)
    assert merged == sorted(merged)
    for (_, end), (begin, _) in zip(merged, merged[1:]):
        assert begin - end > gap  # separate ranges are more than `gap` apart
    for begin, end in ranges:
        if end > begin:
            assert any(b <= begin and end <= e for b, e in merged)
    for b, e in merged:  # every merged range starts and ends at a wanted byte
        assert any(begin == b for begin, end in ranges if end > begin)
        assert any(end == e for begin, end in ranges if end > begin)


@pytest.fixture(scope="module")
def liar() -> Iterator[tuple[web.Application, int, asyncio.AbstractEventLoop]]:
    """One lying host for the whole property test, on its own loop in a thread (loopback only)."""
    app = file_host({"m": MODEL})
    with serve_in_thread(app) as (port, loop):
        yield app, port, loop


@given(st.lists(st.one_of(st.none(), st.sampled_from(LIE_KINDS)), min_size=1, max_size=6), st.sampled_from([64, 1024, 100_000]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_lying_hosts_give_the_right_tensors_or_a_clear_error(liar, lies: list[str | None], first_read: int) -> None:
    app, port, loop = liar

    def queue() -> None:
        app[LIES][:] = lies

    loop.call_soon_threadsafe(queue)

    async def check() -> None:
        async with fetcher() as client:
            try:
                content = await read_remote(client, f"http://127.0.0.1:{port}/liar/m", Transcript(), pick, RemoteReadConfig(first_read=first_read))
            except ModelsieveError as exc:
                assert str(exc) and "\n" not in str(exc)
                event("clear error")
                return
        if content.header is not None:
            assert content.file_size == len(MODEL)
            assert_picked_arrays(dict(content.arrays))
            event("ranged" if content.ranged else "streamed")
        else:
            event("no header")
            # only a body cut short can make a whole-file read disagree with the header
            assert content.problem

    asyncio.run(check())
    assert app[LOG].hits["/liar/m"] >= 1


@pytest.mark.parametrize("route", ["files", "norange"])
async def test_a_header_longer_than_the_cap_is_never_held_or_parsed_only_the_file_hashed(aiohttp_server, route: str) -> None:
    """A host can claim a header of up to 100 MB; the crawler neither buffers nor parses more than its cap."""
    padded = synthetic_safetensors(seed=1, tensors=3, width=16, metadata={"padding": "x" * 20_000})
    server = await aiohttp_server(file_host({"m": padded}))
    transcript = Transcript()
    config = RemoteReadConfig(first_read=1024, max_header_bytes=16_000)
    async with fetcher() as client:
        content = await read_remote(client, server.make_url(f"/{route}/m"), transcript, pick, config)
    assert content.header is None and not content.ranged and "16000" in (content.problem or "")
    assert content.digests["sha256"] == hashlib.sha256(padded).hexdigest()  # exact matching still works
    assert [e.request_range for e in transcript.exchanges][-1] in (None, "bytes=0-1023")  # no Range read of the header


@given(st.sets(st.sampled_from(sorted(TENSORS))), st.sampled_from([64, 1024, 100_000]), st.sampled_from([0, 4096, 1 << 20]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_whole_file_digests_come_only_from_every_byte_in_order(liar, chosen: set[str], first_read: int, gap: int) -> None:
    """A digest of partial content would be false evidence: it is given exactly when the ranges cover the file."""
    _app, port, _loop = liar

    def select(infos: Sequence[TensorInfo], budget_fraction: float) -> list[TensorInfo]:
        return [info for info in infos if info.name in chosen]

    async def read() -> tuple[dict[str, str], Transcript]:
        transcript = Transcript()
        async with fetcher() as client:
            content = await read_remote(client, f"http://127.0.0.1:{port}/files/m", transcript, select, RemoteReadConfig(first_read=first_read, coalesce_gap=gap))
        assert content.ranged and sorted(content.arrays) == sorted(chosen)
        return dict(content.digests), transcript

    digests, transcript = asyncio.run(read())
    covered = 0  # the ranges are requested in file order: how far they reach without a hole
    for exchange in transcript.exchanges:
        first, _, last = (exchange.request_range or "").removeprefix("bytes=").partition("-")
        if int(first) <= covered:
            covered = max(covered, min(int(last) + 1, len(MODEL)))
    whole = covered == len(MODEL)
    event("whole" if digests else "partial")
    if digests:
        assert digests["sha256"] == hashlib.sha256(MODEL).hexdigest()
    assert bool(digests) == whole
