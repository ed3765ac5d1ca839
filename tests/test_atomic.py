"""hashlists.atomic: a file is whole or untouched, and no temp file stays behind."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.hashlists.atomic import atomic_write


@given(old=st.binary(max_size=64), new=st.binary(max_size=64), fail=st.booleans())
@settings(max_examples=50, deadline=None)
def test_the_file_is_the_new_bytes_after_a_clean_block_and_the_old_after_a_failed_one(
    tmp_path_factory: pytest.TempPathFactory, old: bytes, new: bytes, fail: bool
) -> None:
    folder = tmp_path_factory.mktemp("atomic")
    path = folder / "out.bin"
    path.write_bytes(old)
    with pytest.raises(KeyboardInterrupt) if fail else contextlib.nullcontext():
        with atomic_write(path) as handle:
            handle.write(new)
            if fail:
                raise KeyboardInterrupt  # also Ctrl-C and SIGTERM (api.cli raises a subclass of it)
    assert path.read_bytes() == (old if fail else new)
    assert [p.name for p in folder.iterdir()] == ["out.bin"]


def test_two_writers_of_one_path_never_share_a_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with atomic_write(path) as first, atomic_write(path) as second:
        assert first.name != second.name
        first.write(b"first")
        second.write(b"second")
    assert path.read_bytes() == b"first"  # the outer block ends last: the last rename wins
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_an_unwritable_place_raises_oserror_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "missing" / "out.bin") as handle:
            handle.write(b"x")
    assert list(tmp_path.iterdir()) == []

