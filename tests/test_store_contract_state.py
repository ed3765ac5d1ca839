"""The store contract, on every backend, for what commands and the API keep beside the lists:
registered bases, API keys and resumable crawl jobs (background cohorts: test_calibration_store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelsieve.api.http.auth import KeyStore
from modelsieve.crawler.inputs import read_targets
from modelsieve.crawler.job import CrawlJob, JobError
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import FingerprintKey
from modelsieve.hashlists.store import Store, open_store
from tests.calibration_fixtures import BASE, KEY, base, tuned
from tests.store_backends import StoreLocations


def test_bases_are_added_listed_loaded_per_key_and_removed(store_locations: StoreLocations) -> None:
    location = store_locations.new()
    fingerprint = base().fingerprint
    with open_store(location) as store:
        info = store.add_base(BASE, fingerprint, source="sd15.safetensors")
        assert (info.name, info.key_id, info.tensors, info.source) == (BASE, KEY.key_id, len(fingerprint.sketches), "sd15.safetensors")
        with pytest.raises(ModelsieveError, match="already registered"):
            store.add_base(BASE, fingerprint)
        with pytest.raises(ModelsieveError, match="delta|raw"):
            store.add_base("tuned", tuned(100))
        with pytest.raises(ModelsieveError, match="1-256"):
            store.add_base(" ", fingerprint)
        assert store.add_base(BASE, fingerprint, source="again", replace=True).source == "again"
        with pytest.raises(ModelsieveError, match=f"it is base '{BASE}' again"):  # one model under two names
            store.add_base("sd15-copy", fingerprint)
    with open_store(location) as store:  # persisted, read back by another connection
        assert [b.name for b in store.list_bases()] == [BASE]
        (loaded,) = store.bases(KEY)
        assert loaded.name == BASE and loaded.fingerprint.to_bytes() == fingerprint.to_bytes()
        assert store.bases(FingerprintKey("other", b"another key of 16+ bytes")) == []
        store.remove_base(BASE)
        assert store.list_bases() == [] and store.bases(KEY) == []
        with pytest.raises(ModelsieveError, match="no base named"):
            store.remove_base(BASE)


def test_api_keys_are_created_verified_and_revoked(store_locations: StoreLocations) -> None:
    location = store_locations.new()
    with open_store(location) as store:
        token, key = KeyStore(store).create(["lookup", "crawl"], name="hub", rate_per_second=2.5)
    with open_store(location) as store:  # a server process reading what the CLI made
        keys = KeyStore(store)
        assert keys.verify(token) == key and key.rate_per_second == 2.5 and key.scopes == ("lookup", "crawl")
        assert keys.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert keys.verify(f"msk_{key.key_id}_") is None and keys.verify("msk_00000000_" + "A" * 43) is None
        assert [k.key_id for k in keys.all()] == [key.key_id]
        keys.revoke(key.key_id)
        assert keys.verify(token) is None and keys.all()[0].revoked_at is not None
        with pytest.raises(ModelsieveError, match="no live API key"):
            keys.revoke(key.key_id)


def recommendation(url: str) -> bytes:
    return json.dumps({"url": url, "action": "none"}).encode() + b"\n"


def test_a_crawl_job_keeps_its_targets_once_and_resumes_exactly_where_its_output_stopped(tmp_path: Path, store: Store) -> None:
    urls = [f"http://127.0.0.1/files/{i}" for i in range(5)]
    links = tmp_path / "links.txt"
    links.write_text("\n".join([urls[0], "not a url", *urls[1:], urls[2]]) + "\n")
    out = tmp_path / "recs.jsonl"
    bad, repeated = [], []
    job = CrawlJob.open(store, out, links, lambda: read_targets(links.read_text().splitlines()), resume=False,
                        on_bad_line=bad.append, on_duplicate=repeated.append)
    assert len(bad) == 1 and [t.url for t in repeated] == [urls[2]]
    assert [t.url for t in job.pending()] == urls and (job.progress().total, job.progress().done) == (5, 0)
    with pytest.raises(JobError, match="already in the store"):
        CrawlJob.open(store, out, links, lambda: [], resume=False)
    # Two recommendations committed, a third written but not yet marked, a fourth torn by a kill
    # (which also releases the first run's lock on the output).
    job.close()
    committed = recommendation(urls[0]) + recommendation(urls[1])
    out.write_bytes(committed)
    store.mark_crawl_targets_done(job.job_id, urls[:2], len(committed))
    out.write_bytes(committed + recommendation(urls[2]) + recommendation(urls[3])[:10])
    resumed = CrawlJob.open(store, out, links, lambda: [], resume=True)
    assert resumed.job_id == job.job_id
    assert [t.url for t in resumed.pending()] == urls[3:] and resumed.progress().done == 3
    assert out.read_bytes() == committed + recommendation(urls[2])
    assert store.crawl_job(job.job_id).out_offset == len(out.read_bytes())
    other_input = tmp_path / "other.txt"
    other_input.write_text(urls[0] + "\n")
    with pytest.raises(JobError, match="is not the input"):
        CrawlJob.open(store, out, other_input, lambda: [], resume=True)
