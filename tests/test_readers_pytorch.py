"""PyTorch checkpoints: real torch-written fixtures, the stdlib test writer, and hostile variants."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from modelsieve.fingerprint.errors import ModelFileError, UnsafePickleError
from modelsieve.fingerprint.readers import open_model
from modelsieve.fingerprint.readers import pytorch, restricted_pickle
from modelsieve.fingerprint.readers.pytorch import MAX_NESTING
from modelsieve.fingerprint.readers.restricted_pickle import MAX_CRAFTABLE_KEYS, MAX_PICKLE_BYTES, MAX_TUPLE_NESTING, load_pickle
from tests.torch_files import (
    Build,
    Call,
    Global,
    PersistentId,
    Raw,
    dumps,
    ordered_dict,
    random_arrays,
    state_dict,
    tensor_ref,
    write_legacy,
    write_zip,
)

DATA = Path(__file__).parent / "data"
WRITERS = {"zip": write_zip, "legacy": write_legacy}


def _values_equal(actual: np.ndarray, expected: np.ndarray) -> bool:
    return actual.dtype == expected.dtype and actual.shape == expected.shape and actual.tobytes() == expected.tobytes()


def _refused(path: Path, error: type[ModelFileError] = ModelFileError) -> str:
    with pytest.raises(error) as caught:
        open_model(path).close()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("fixture, fmt", [("torch_zip_small.ckpt", "pytorch-zip"), ("torch_legacy_small.ckpt", "pytorch-legacy")])
def test_reads_real_torch_files_exactly(fixture: str, fmt: str) -> None:
    with open_model(DATA / fixture) as reader, open_model(DATA / "torch_small_expected.safetensors") as expected:
        assert reader.format == fmt
        assert sorted(reader.tensors(), key=str) == sorted(expected.tensors(), key=str)
        for info in expected.tensors():
            assert _values_equal(reader.array(info.name), expected.array(info.name)), info.name
        assert reader.problems() == ["ignored entries beside the state dict: 'global_step', 'epoch'"]


@pytest.mark.parametrize("kind", WRITERS)
def test_reads_what_the_test_writer_writes(tmp_path: Path, kind: str) -> None:
    arrays = random_arrays()
    obj, storages = state_dict(arrays, legacy=kind == "legacy")
    path = WRITERS[kind](tmp_path / "model.pt", obj, storages)
    with open_model(path) as reader:
        assert [t.name for t in reader.tensors()] == list(arrays)
        assert {t.name: t.dtype for t in reader.tensors()}["model.norm.weight"] == "BF16"
        for name, array in arrays.items():
            view = reader.array(name)
            assert _values_equal(view, array) and not view.flags.writeable


def test_test_writer_matches_real_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")  # runs where torch is installed (never a dependency)
    arrays = random_arrays()
    for kind, writer in WRITERS.items():
        obj, storages = state_dict(arrays, legacy=kind == "legacy")
        loaded = torch.load(writer(tmp_path / f"{kind}.pt", obj, storages), weights_only=True)
        for name, array in arrays.items():
            tensor = loaded[name]
            got = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if tensor.dtype == torch.bfloat16 else tensor.numpy()
            assert _values_equal(got, array), (kind, name)


@pytest.mark.parametrize("kind", WRITERS)
def test_strided_and_offset_views(tmp_path: Path, kind: str) -> None:
    legacy = kind == "legacy"
    base = np.arange(24, dtype=np.float32)
    obj = ordered_dict(
        {
            "transposed": tensor_ref("0", base.dtype, 24, (6, 4), stride=(1, 6), legacy=legacy),
            "window": tensor_ref("0", base.dtype, 24, (2, 3), stride=(3, 1), offset=10, legacy=legacy),
            "broadcast": tensor_ref("0", base.dtype, 24, (3, 2), stride=(0, 1), offset=22, legacy=legacy),
            "empty": tensor_ref("0", base.dtype, 24, (0, 7), legacy=legacy),
        }
    )
    with open_model(WRITERS[kind](tmp_path / "views.pt", obj, {"0": base})) as reader:
        np.testing.assert_array_equal(reader.array("transposed"), base.reshape(4, 6).T)
        np.testing.assert_array_equal(reader.array("window"), base[10:16].reshape(2, 3))
        np.testing.assert_array_equal(reader.array("broadcast"), np.broadcast_to(base[22:24], (3, 2)))
        assert reader.array("empty").shape == (0, 7)
        assert not reader.array("transposed").flags.writeable


def test_nested_checkpoints_flatten_to_dotted_names(tmp_path: Path) -> None:
    weights = np.ones(3, dtype=np.float32)
    nested = {
        "model": {"encoder": {"layers": [tensor_ref("0", weights.dtype, 3, (3,)), 7]}},
        "optimizer": "adam",
    }
    with open_model(write_zip(tmp_path / "nested.pt", {"state_dict": nested, "epoch": 1}, {"0": weights})) as reader:
        assert [t.name for t in reader.tensors()] == ["model.encoder.layers.0"]
        assert reader.problems() == [
            "ignored entries beside the state dict: 'epoch'",
            "ignored 2 non-tensor values: 'model.encoder.layers.1' (int), 'optimizer' (str)",
        ]


def _hostile_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that would run code (creating `marker` where that is possible), and the global named."""

    class Trick:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    return {
        "os.system": (dumps(Call(Global("os", "system"), (f"touch {marker}",))), "os.system"),
        "posix.system": (pickle.dumps(Trick(), protocol=2), "posix.system"),
        "reduce-protocol-4": (pickle.dumps(Trick(), protocol=4), "posix.system"),  # STACK_GLOBAL
        "subprocess": (dumps(Call(Global("subprocess", "Popen"), (["touch", str(marker)],))), "subprocess.Popen"),
        "eval": (dumps(Call(Global("builtins", "eval"), (f"open({str(marker)!r}, 'w')",))), "builtins.eval"),
        "exec": (dumps(Call(Global("builtins", "exec"), (f"open({str(marker)!r}, 'w')",))), "builtins.exec"),
        "getattr": (dumps(Call(Global("builtins", "getattr"), (Global("os", "path"), "join"))), "builtins.getattr"),
        "torch-module": (dumps(Call(Global("torch.nn.modules.linear", "Linear"), (2, 2))), "torch.nn.modules.linear.Linear"),
        "build-setstate": (dumps(Build(Call(Global("collections", "OrderedDict"), ()), {"__setstate__": Global("os", "system")})), "os.system"),
        "inst": (b"\x80\x02(S'touch x'\nios\nsystem\n.", "os.system"),
    }


@pytest.mark.parametrize("name", list(_hostile_pickles(Path("x"))))
@pytest.mark.parametrize("kind", WRITERS)
def test_hostile_pickles_are_refused_before_anything_runs(tmp_path: Path, name: str, kind: str) -> None:
    marker = tmp_path / "marker"
    payload, named = _hostile_pickles(marker)[name]
    path = tmp_path / "evil.pt"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        system = {"little_endian": True}
        path.write_bytes(dumps(0x1950A86A20F9469CFC6C) + dumps(1001) + dumps(system) + payload)
    message = _refused(path, UnsafePickleError)
    assert f"refusing pickle global {named}" in message
    assert not marker.exists()


def test_marker_payload_really_would_run(tmp_path: Path) -> None:
    """The marker test is meaningful: the same bytes do create the marker under plain pickle."""
    marker = tmp_path / "marker"
    pickle.loads(_hostile_pickles(marker)["os.system"][0])
    assert marker.exists()


def test_codecs_encode_is_only_for_latin1_bytes(tmp_path: Path) -> None:
    assert load_pickle(dumps(b"\x00\xffbytes"))[0] == b"\x00\xffbytes"
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        load_pickle(dumps(Call(Global("_codecs", "encode"), ("x", "rot13"))))


def _zip_with(tmp_path: Path, obj: object, storages: dict[str, np.ndarray]) -> Path:
    return write_zip(tmp_path / "model.pt", obj, storages)


@pytest.mark.parametrize(
    "ref, storages, expected",
    [
        (tensor_ref("0", np.float32, 2**60, (2,)), {"0": np.ones(2, np.float32)}, "declares 4611686018427387904 bytes"),
        (tensor_ref("0", np.float32, 2, (2**40, 2**40)), {"0": np.ones(2, np.float32)}, "reaches past"),
        (tensor_ref("0", np.float32, 4, (2, 2), stride=(3, 1)), {"0": np.ones(4, np.float32)}, "reaches past"),
        (tensor_ref("0", np.float32, 4, (4,), offset=1), {"0": np.ones(4, np.float32)}, "reaches past"),
        (tensor_ref("0", np.float32, 4, (1,) * 65), {"0": np.ones(4, np.float32)}, "at most 64"),
        (tensor_ref("0", np.float32, 4, (-1,)), {"0": np.ones(4, np.float32)}, "non-negative"),
        (tensor_ref("9", np.float32, 4, (4,)), {"0": np.ones(4, np.float32)}, "has no data member"),
        (Call(Global("torch._utils", "_rebuild_tensor_v2"), ("not a storage", 0, (1,), (1,), False, None)), {}, "not a storage"),
        (PersistentId(("storage", "FloatStorage", "0", "cpu", 1)), {"0": np.ones(1, np.float32)}, "no storage type"),
    ],
)
def test_absurd_sizes_and_bad_views_are_refused(tmp_path: Path, ref: object, storages: dict[str, np.ndarray], expected: str) -> None:
    assert expected in _refused(_zip_with(tmp_path, ordered_dict({"w": ref}), storages))


def test_views_that_amplify_storage_are_refused(tmp_path: Path) -> None:
    refs = {f"w{i}": tensor_ref("0", np.float32, 1, (2**20,), stride=(0,)) for i in range(8)}
    assert "view" in _refused(_zip_with(tmp_path, ordered_dict(refs), {"0": np.ones(1, np.float32)}))


@pytest.mark.parametrize(
    "payload, expected",
    [
        (Raw(b"\x8a\x01\x00r\xff\xff\xff\x7f"), "memo index 2147483647 skips ahead"),  # LONG_BINPUT far ahead
        (Raw(b"h\x05"), "reads memo slot 5"),
        (Raw(b"}" + b")" + b"\x85" * (MAX_TUPLE_NESTING + 5) + b"Ns"), "nests tuples"),  # deep tuple as a dict key
        (Raw(b"t"), "no MARK"),
        (Raw(b"\xff"), "malformed pickle"),
    ],
)
def test_pickle_abuse_is_bounded(tmp_path: Path, payload: Raw, expected: str) -> None:
    assert expected in _refused(_zip_with(tmp_path, payload, {}))


def test_hashing_a_deep_tuple_cannot_crash_the_reader(tmp_path: Path) -> None:
    """A million nested tuples used as a dict key would overflow the C stack when hashed."""
    bomb = Raw(b"}" + b")" + b"\x85" * 1_000_000 + b"Ns")
    assert "nests tuples" in _refused(_zip_with(tmp_path, bomb, {}))


_COLLIDING = [k * (2**61 - 1) for k in range(1, MAX_CRAFTABLE_KEYS + 2)]  # every one hashes to 0


@pytest.mark.parametrize(
    "payload",
    [
        {key: 0 for key in _COLLIDING},  # SETITEMS
        {(i, i): 0 for i in range(MAX_CRAFTABLE_KEYS + 1)},  # tuple keys: their hash is solvable
        Raw(b"\x8f(" + b"".join(b"\x8a\x09" + k.to_bytes(9, "little") for k in _COLLIDING) + b"\x90"),  # a set: ADDITEMS
        Raw(b"(" + b"".join(b"\x8a\x09" + k.to_bytes(9, "little") + b"N" for k in _COLLIDING) + b"d"),  # protocol 0 DICT
        Call(Global("collections", "OrderedDict"), ([(key, 0) for key in _COLLIDING],)),  # keys handed to the stand-in
    ],
    ids=["setitems", "tuples", "additems", "dict", "ordereddict"],
)
def test_keys_whose_hashes_a_file_can_collide_are_bounded(tmp_path: Path, payload: object) -> None:
    """k·(2⁶¹−1) all hash to 0: 40,000 such keys took 11 s to unpickle, the 32 MB a pickle may hold hours."""
    assert "whose hash" in _refused(_zip_with(tmp_path, payload, {}))


def test_checkpoints_keyed_by_strings_and_small_integers_still_load(tmp_path: Path) -> None:
    """Optimizer state keys parameters by small integers; Lightning keys callbacks by class."""
    many = {"optimizer": {"state": {i: {"step": i} for i in range(5 * MAX_CRAFTABLE_KEYS)}},
            "callbacks": {Global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): {"best": 1.0}},
            "steps": {2**61 - 3: 1, -(2**61 - 3): 2}}
    arrays = {"w": np.ones(3, np.float32)}
    obj, storages = state_dict(arrays)
    with open_model(write_zip(tmp_path / "m.pt", {"state_dict": obj, **many}, storages)) as reader:
        assert [t.name for t in reader.tensors()] == ["w"]


@pytest.mark.parametrize(
    "bound, payload",
    [
        ("MAX_PICKLE_CONTAINERS", Raw(b"(" + b"}" * 1001 + b"l")),  # an empty dict per byte: 64 bytes each
        ("MAX_PICKLE_CONTAINERS", Raw(b"(" + b"\x8f" * 1001 + b"l")),  # an empty set per byte: 216 bytes each
        ("MAX_PICKLE_OBJECTS", Raw(b"(" + b"\x8c\x02ab" * 1001 + b"l")),
    ],
    ids=["dicts", "sets", "strings"],
)
def test_what_one_pickle_may_build_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: str, payload: Raw) -> None:
    """Before these bounds, 4 MB of empty dicts took 1.3 GB and 17 s; 32 MB would take about 10 GB."""
    monkeypatch.setattr(restricted_pickle, bound, 1000)
    assert "pickle builds more than" in _refused(_zip_with(tmp_path, payload, {}))


def test_the_walk_of_a_checkpoint_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """References to one memoized value cost 2 bytes each and build nothing, yet each is a value to walk."""
    monkeypatch.setattr(pytorch, "MAX_WALKED_VALUES", 1000)
    many = Raw(b"K\x07q\x00(" + b"h\x00" * 1001 + b"l")
    assert "holds more than 1000 values" in _refused(_zip_with(tmp_path, many, {}))


def test_notes_on_a_hostile_checkpoint_stay_short(tmp_path: Path) -> None:
    """A million shared references or side entries give a few notes, not a million strings."""
    listed = Raw(b"](" + b"]q\x00" + b"h\x00" * 100_000 + b"e")  # a list holding one list 100,001 times
    side = {"state_dict": {}, **{f"extra{i}": i for i in range(100_000)}}
    for payload in (listed, side):
        path = _zip_with(tmp_path, payload, {})
        with open_model(path) as reader:
            assert len(reader.problems()) <= 12 and all(len(p) < 2000 for p in reader.problems())
            assert any("more" in p for p in reader.problems()), reader.problems()


def test_deep_containers_and_shared_references_stay_cheap(tmp_path: Path) -> None:
    deep = Raw(b"]" * (MAX_NESTING + 10) + b"a" * (MAX_NESTING + 9))  # lists nested beyond the walk bound
    assert "nests containers" in _refused(_zip_with(tmp_path, deep, {}))
    # "billion laughs": each level holds the previous one twice; 2**40 paths, 40 containers.
    chain = b"\x80\x04]\x94" + b"".join(b"](h%sh%se\x94" % (bytes([i]), bytes([i])) for i in range(40)) + b"."
    path = tmp_path / "laughs.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", chain)
    with open_model(path) as reader:
        assert reader.tensors() == []
        assert any("referenced twice" in p for p in reader.problems())


def test_oversized_pickle_is_refused(tmp_path: Path) -> None:
    big = Raw(b"B" + struct.pack("<I", MAX_PICKLE_BYTES) + b"\0" * MAX_PICKLE_BYTES + b"0N")
    path = tmp_path / "big.pt"
    write_legacy(path, big, {})
    assert "larger than the bound" in _refused(path)


def test_truncated_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", dumps({"a": 1})[:-1])
    assert "STOP" in _refused(path) or "malformed pickle" in _refused(path)


def _good_zip(tmp_path: Path) -> tuple[Path, bytes]:
    obj, storages = state_dict({"a": np.arange(4, dtype=np.float32), "b": np.ones(3, np.float16)})
    path = write_zip(tmp_path / "model.pt", obj, storages)
    return path, path.read_bytes()


def _central_entry(data: bytes, name: str) -> int:
    """Offset of `name`'s central directory record (the last copy of the name is in the directory)."""
    return data.rindex(b"PK\x01\x02", 0, data.rindex(name.encode()))


def _patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    return data[:offset] + struct.pack(fmt, *values) + data[offset + struct.calcsize(fmt) :]


def _member_claims_2gb(data: bytes) -> bytes:
    entry = _central_entry(data, "archive/data/0")
    return _patched(data, entry + 20, "<II", 2**31, 2**31)  # compressed and uncompressed sizes


def _member_points_at_neighbour(data: bytes) -> bytes:
    first, second = _central_entry(data, "archive/data/0"), _central_entry(data, "archive/data/1")
    return data[: second + 42] + data[first + 42 : first + 46] + data[second + 46 :]  # local header offset


@pytest.mark.parametrize(
    "patch, expected",
    [
        (_member_claims_2gb, "run past the end"),
        (lambda d: _patched(d, len(d) - 22 + 12, "<I", 2**31), "beyond the bounds"),
        (lambda d: _patched(d, len(d) - 22 + 12, "<I", len(d)), "outside the"),
        (_member_points_at_neighbour, "overlap"),
        (lambda d: _patched(d, _central_entry(d, "archive/data/0") + 8, "<H", 1), "encrypted"),
        (lambda d: d[: len(d) // 2], "end-of-central-directory"),
    ],
    ids=["member-larger-than-file", "central-directory-bound", "central-directory-outside", "overlapping-members", "encrypted", "truncated"],
)
def test_zip_bombs_and_lying_directories_are_refused(tmp_path: Path, patch: object, expected: str) -> None:
    path, data = _good_zip(tmp_path)
    path.write_bytes(patch(data))  # type: ignore[operator]
    assert expected in _refused(path)


def test_compressed_duplicate_and_foreign_zips_are_refused(tmp_path: Path) -> None:
    obj, storages = state_dict({"a": np.zeros(1000, dtype=np.float32)})
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", dumps(obj))
        archive.writestr("archive/data/0", storages["0"].tobytes())
    assert "compressed" in _refused(path)
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning):
        archive.writestr("archive/data.pkl", dumps(obj))
        archive.writestr("archive/data.pkl", dumps(obj))
    assert "appears twice" in _refused(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/data.pkl", dumps(obj))
        archive.writestr("b/data.pkl", dumps(obj))
    assert "2 '<root>/data.pkl' members" in _refused(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    assert "not a torch checkpoint" in _refused(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", dumps(obj))
        archive.writestr("archive/byteorder", "big")
    assert "big-endian" in _refused(path)


def _legacy_parts(arrays: dict[str, np.ndarray]) -> list[bytes]:
    obj, storages = state_dict(arrays, legacy=True)
    system = {"protocol_version": 1001, "little_endian": True}
    parts = [dumps(0x1950A86A20F9469CFC6C), dumps(1001), dumps(system), dumps(obj), dumps(list(storages))]
    return parts + [struct.pack("<q", a.size) + a.tobytes() for a in storages.values()]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: [dumps(12345)] + p[1:], "no torch magic number"),
        (lambda p: p[:1] + [dumps(999)] + p[2:], "unsupported legacy torch protocol"),
        (lambda p: p[:2] + [dumps({"little_endian": False})] + p[3:], "big-endian"),
        (lambda p: p[:4] + [dumps(["0", "7"])] + p[5:], "key list"),
        (lambda p: p[:5] + [struct.pack("<q", 3) + p[5][8:]], "holds 3 elements"),
        (lambda p: p[:5] + [p[5][:-1]], "runs past the end"),
        (lambda p: p[:5], "is missing"),
        (lambda p: p[:3], "malformed pickle"),
    ],
    ids=["magic", "protocol", "big-endian", "keys", "count", "truncated-data", "missing-storage", "missing-pickles"],
)
def test_broken_legacy_checkpoints_are_refused(tmp_path: Path, edit: object, expected: str) -> None:
    path = tmp_path / "legacy.pt"
    path.write_bytes(b"".join(edit(_legacy_parts({"w": np.arange(4, dtype=np.float32)}))))  # type: ignore[operator]
    assert expected in _refused(path)


def test_legacy_trailing_bytes_are_a_problem_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    path.write_bytes(b"".join(_legacy_parts({"w": np.arange(4, dtype=np.float32)})) + b"junk")
    with open_model(path) as reader:
        assert reader.problems() == ["4 trailing bytes after the last storage"]
        np.testing.assert_array_equal(reader.array("w"), np.arange(4, dtype=np.float32))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"GGUF\x03\x00\x00\x00", "GGUF"),
        (pickle.dumps({"a": 1}, protocol=2), "no torch magic number"),
        (b"just some text", "unknown format"),
    ],
)
def test_unknown_formats_are_named(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    assert expected in _refused(path)


def test_float8_tensors_on_untyped_storage(tmp_path: Path) -> None:
    """torch ≥ 2.1 writes float8 / uint16 tensors with _rebuild_tensor_v3 over an UntypedStorage."""
    values = np.array([0.5, -1.0, 2.0, 0.0], dtype=ml_dtypes.float8_e4m3fn)
    pid = ("storage", Global("torch", "UntypedStorage"), "0", "cpu", values.nbytes)
    hooks = Call(Global("collections", "OrderedDict"), ())
    ref = Call(
        Global("torch._utils", "_rebuild_tensor_v3"),
        (PersistentId(pid), 0, (2, 2), (2, 1), False, hooks, Global("torch", "float8_e4m3fn")),
    )
    with open_model(write_zip(tmp_path / "f8.pt", ordered_dict({"w": ref}), {"0": values})) as reader:
        assert reader.tensors()[0].dtype == "F8_E4M3"
        assert _values_equal(reader.array("w"), values.reshape(2, 2))


def test_data_only_objects_of_real_sd_checkpoints_are_skipped_not_refused(tmp_path: Path) -> None:
    """SD 1.x .ckpt files carry numpy scalars and Lightning's ModelCheckpoint state beside the weights."""
    weights = np.ones(2, dtype=np.float32)
    numpy_scalar = Raw(pickle.dumps(np.float64(0.25), protocol=2)[2:-1])  # numpy.*.scalar, numpy.dtype, _codecs.encode
    callback = Raw(b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n)\x81" + dumps({"best_model_score": 1.0})[2:-1] + b"b")
    checkpoint = {"state_dict": ordered_dict({"w": tensor_ref("0", weights.dtype, 2, (2,))}), "loss": numpy_scalar, "callbacks": callback}
    with open_model(write_zip(tmp_path / "sd.ckpt", checkpoint, {"0": weights})) as reader:
        assert [t.name for t in reader.tensors()] == ["w"]
        assert reader.problems() == ["ignored entries beside the state dict: 'loss', 'callbacks'"]
