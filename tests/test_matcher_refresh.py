"""A refresh builds the next indexes beside the current ones: lookups never wait for it, never see half of it."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelsieve.hashlists.digest_index import DigestIndex
from modelsieve.hashlists.fuzzy_index import CODE_BYTES, FuzzyIndex
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import IndexRow, NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore


def sha(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


class PausingStore(SQLiteStore):
    """A real SQLite store whose index_rows, once `pause` is set, stops after its first row until released."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.pause = False
        self.paused, self.release = threading.Event(), threading.Event()

    def index_rows(self, **kwargs: Any) -> Iterator[IndexRow]:
        for number, row in enumerate(super().index_rows(**kwargs)):
            if self.pause and number == 1:
                self.paused.set()
                self.release.wait()
            yield row


def test_lookups_answer_from_the_current_indexes_while_a_refresh_is_under_way(tmp_path: Path) -> None:
    store = PausingStore(tmp_path / "store.db")
    store.create_list("main", publisher="platform-a")
    first = store.add_entry("main", NewEntry(category="2c", digests={"sha256": sha("first")}))
    matcher = Matcher(store, refresh_interval=math.inf)
    later = [store.add_entry("main", NewEntry(category="2c", digests={"sha256": sha(f"later {n}")})) for n in range(3)]
    url = store.add_entry("main", NewEntry(category="nudify-service", kind="service", url="https://models.example/bad/lora.safetensors"))
    assert first is not None and url is not None and all(later)
    store.pause = True
    refresher = threading.Thread(target=matcher.refresh)
    refresher.start()
    assert store.paused.wait(60), "the refresh has read part of the new entries"

    seen: dict[str, Any] = {}

    def look() -> None:
        seen["first"] = [m.entry_id for m in matcher.match_digests({"sha256": sha("first")})]
        seen["later"] = [m.entry_id for n in range(3) for m in matcher.match_digests({"sha256": sha(f"later {n}")})]
        seen["url"] = matcher.match_url("https://models.example/bad/lora.safetensors")
        seen["seq"] = matcher.seq

    looker = threading.Thread(target=look)
    looker.start()
    looker.join(60)  # a hang guard, not a timing check: a lookup waiting for the refresh would never end
    alive = looker.is_alive()
    store.release.set()
    refresher.join(60)
    assert not alive, "a lookup waited for the refresh"
    assert seen == {"first": [first.id], "later": [], "url": [], "seq": first.seq}, "the indexes as before the refresh, whole"
    assert [m.entry_id for n in range(3) for m in matcher.match_digests({"sha256": sha(f"later {n}")})] == [e.id for e in later if e]
    assert [m.entry_id for m in matcher.match_url("https://models.example/bad/lora.safetensors")] == [url.id]
    assert matcher.seq == store.last_seq()
    store.close()


def test_a_digest_index_copy_grows_without_changing_the_original() -> None:
    original = DigestIndex()
    original.add(1, {"sha256": sha("a")})
    original.compact()
    original.add(2, {"sha256": sha("b")})  # left in the overlay
    twin = original.copy()
    twin.add(3, {"sha256": sha("c")})
    twin.add(4, {"sha256": sha("b")})
    twin.compact()
    assert [original.lookup("sha256", sha(s)) for s in "abc"] == [[1], [2], []]
    assert [twin.lookup("sha256", sha(s)) for s in "abc"] == [[1], [2, 4], [3]]


def test_a_fuzzy_index_copy_grows_without_changing_what_the_original_finds() -> None:
    rng = np.random.default_rng(0)
    codes = [{"unet": rng.integers(0, 256, CODE_BYTES, dtype=np.uint8).tobytes()} for _ in range(3000)]
    original = FuzzyIndex()
    original.add_many([(seq, codes[seq]) for seq in range(1000)])
    twin = original.copy()
    twin.add_many([(seq, codes[seq]) for seq in range(1000, 1010)])  # within the shared table's capacity
    twin.add_many([(seq, codes[seq]) for seq in range(1010, 3000)])  # past it: a new table
    assert original.candidates(codes[5], limit=1) == twin.candidates(codes[5], limit=1) == [(5, 0)]
    for seq in (1005, 2500):
        assert seq not in dict(original.candidates(codes[seq], limit=5)), "rows added to the copy stay out of the original"
        assert twin.candidates(codes[seq], limit=1) == [(seq, 0)]
    assert len(original) == 1000 and len(twin) == 3000
