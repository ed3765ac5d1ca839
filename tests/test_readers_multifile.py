"""Sharded checkpoints and diffusers folders read as one model; the model-level folder walk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelsieve.fingerprint.errors import ModelFileError, UnsafePickleError
from modelsieve.fingerprint.readers import open_model, walk_models
from tests.torch_files import Call, Global, state_dict, write_zip

RNG = np.random.default_rng(7)


def _weights(*names: str) -> dict[str, np.ndarray]:
    return {name: RNG.standard_normal((2, 3)).astype(np.float32) for name in names}


def _sharded(folder: Path, shards: dict[str, dict[str, np.ndarray]], weight_map: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for shard, tensors in shards.items():
        save_file(tensors, folder / shard)
    if weight_map is None:
        weight_map = {name: shard for shard, tensors in shards.items() for name in tensors}
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 48}, "weight_map": weight_map}))
    return index


def test_sharded_safetensors_read_as_one_model(tmp_path: Path) -> None:
    first, second = _weights("a.weight", "b.weight"), _weights("c.weight")
    index = _sharded(tmp_path / "m", {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second})
    for target in (index, tmp_path / "m"):
        with open_model(target) as reader:
            assert reader.format == "sharded-safetensors"
            assert [t.name for t in reader.tensors()] == ["a.weight", "b.weight", "c.weight"]
            np.testing.assert_array_equal(reader.array("c.weight"), second["c.weight"])
            assert set(reader.metadata) == {"total_size"} and reader.problems() == []


def test_sharded_torch_bins(tmp_path: Path) -> None:
    arrays = _weights("x", "y")
    for i, (name, array) in enumerate(arrays.items()):
        obj, storages = state_dict({name: array})
        write_zip(tmp_path / f"pytorch_model-0000{i + 1}-of-00002.bin", obj, storages)
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"x": "pytorch_model-00001-of-00002.bin", "y": "pytorch_model-00002-of-00002.bin"}})
    )
    with open_model(tmp_path) as reader:
        assert reader.format == "sharded-pytorch-zip"
        np.testing.assert_array_equal(reader.array("y"), arrays["y"])


@pytest.mark.parametrize(
    "weight_map, expected",
    [
        ({"a": "../outside.safetensors"}, "not a plain path"),
        ({"a": "/etc/passwd"}, "not a plain path"),
        ({"a": "s1.safetensors", "b": "missing.safetensors"}, "does not exist"),
        ({"a": "s1.safetensors", "ghost": "s1.safetensors"}, "lacks 1 tensors"),
        ({"a": "s2.safetensors"}, "shard 's2.safetensors' lacks 1 tensors it is mapped to, e.g. 'a'"),
        ([], "weight_map must map"),
    ],
)
def test_lying_shard_indexes_are_refused(tmp_path: Path, weight_map: object, expected: str) -> None:
    index = _sharded(tmp_path, {"s1.safetensors": _weights("a"), "s2.safetensors": _weights("b")})
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelFileError, match=expected):
        open_model(index)


def test_a_tensor_in_two_shards_is_refused(tmp_path: Path) -> None:
    index = _sharded(tmp_path, {"s1.safetensors": _weights("a"), "s2.safetensors": _weights("a", "b")}, {"a": "s1.safetensors", "b": "s2.safetensors"})
    with pytest.raises(ModelFileError, match="'a' is in 's2.safetensors' but mapped to 's1.safetensors'"):
        open_model(index)


def test_symlinked_shard_leading_outside_is_refused(tmp_path: Path) -> None:
    save_file(_weights("a"), tmp_path / "elsewhere.safetensors")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "s1.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))
    with pytest.raises(ModelFileError, match="leads outside"):
        open_model(folder / "model.safetensors.index.json")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}', "repeats the key 'a'"),
        (b'{"weight_map": ', "not valid JSON"),
        (b'{"weight_map": {"\xff": "s1.safetensors"}}', "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not a JSON object"),
        (b'{"weight_map": {}, "metadata": {"total_size": 1' + b"0" * 5000 + b"}}", "more than 4300 digits"),
    ],
)
def test_malformed_index_json_is_refused(tmp_path: Path, content: bytes, expected: str) -> None:
    index = _sharded(tmp_path, {"s1.safetensors": _weights("a"), "s2.safetensors": _weights("b")})
    index.write_bytes(content)
    with pytest.raises(ModelFileError, match=expected):
        open_model(index)


def _diffusers(root: Path) -> dict[str, np.ndarray]:
    """A tiny SD-like pipeline folder: safetensors unet (+ an fp16 variant), a sharded text encoder, a .bin vae."""
    expected: dict[str, np.ndarray] = {}
    (root / "unet").mkdir(parents=True)
    unet = _weights("conv_in.weight", "conv_out.weight")
    save_file(unet, root / "unet" / "diffusion_pytorch_model.safetensors")
    save_file({k: v.astype(np.float16) for k, v in unet.items()}, root / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    (root / "unet" / "config.json").write_text("{}")
    expected |= {f"unet/{k}": v for k, v in unet.items()}
    encoder = _weights("embeddings.weight", "final_layer_norm.weight")
    _sharded(root / "text_encoder", {"model-00001-of-00002.safetensors": dict(list(encoder.items())[:1]), "model-00002-of-00002.safetensors": dict(list(encoder.items())[1:])})
    expected |= {f"text_encoder/{k}": v for k, v in encoder.items()}
    (root / "vae").mkdir()
    vae = _weights("decoder.conv_in.weight")
    write_zip(root / "vae" / "diffusion_pytorch_model.bin", *state_dict(vae))
    expected |= {f"vae/{k}": v for k, v in vae.items()}
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text("{}")
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": "0.30.0",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "safety_checker": [None, None],
                "requires_safety_checker": False,
            }
        )
    )
    return expected


def test_diffusers_folder_reads_as_one_model_with_component_names(tmp_path: Path) -> None:
    expected = _diffusers(tmp_path / "pipe")
    for target in (tmp_path / "pipe", tmp_path / "pipe" / "model_index.json"):
        with open_model(target) as reader:
            assert reader.format == "diffusers"
            assert sorted(t.name for t in reader.tensors()) == sorted(expected)
            for name, array in expected.items():
                np.testing.assert_array_equal(reader.array(name), array)
            assert reader.problems() == ["unet/: not read: diffusion_pytorch_model.fp16.safetensors"]
            assert set(reader.metadata) >= {"_class_name", "_diffusers_version"}


def test_diffusers_components_may_not_escape_or_smuggle(tmp_path: Path) -> None:
    _diffusers(tmp_path / "pipe")
    index = tmp_path / "pipe" / "model_index.json"
    document = json.loads(index.read_text())
    index.write_text(json.dumps(document | {"../evil": ["diffusers", "X"]}))
    with pytest.raises(ModelFileError, match="not a plain folder name"):
        open_model(tmp_path / "pipe")
    (tmp_path / "outside").mkdir()
    save_file(_weights("w"), tmp_path / "outside" / "model.safetensors")
    (tmp_path / "pipe" / "evil").symlink_to(tmp_path / "outside")
    index.write_text(json.dumps(document | {"evil": ["diffusers", "X"]}))
    with pytest.raises(ModelFileError, match="leads outside"):
        open_model(tmp_path / "pipe")
    index.write_text(json.dumps(document))
    weights = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    weights.symlink_to(tmp_path / "outside" / "model.safetensors")  # a component's weights linked out, like a shard
    with pytest.raises(ModelFileError, match="weights 'unet/diffusion_pytorch_model.safetensors' leads outside"):
        open_model(tmp_path / "pipe")
    weights.unlink()
    save_file(_weights("conv_in.weight"), weights)
    evil = Call(Global("os", "system"), ("true",))
    write_zip(tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.bin", evil, {})
    with pytest.raises(UnsafePickleError, match="refusing pickle global os.system"):
        open_model(tmp_path / "pipe")


def test_folder_of_several_models_is_not_one_model(tmp_path: Path) -> None:
    save_file(_weights("a"), tmp_path / "lora_a.safetensors")
    save_file(_weights("b"), tmp_path / "lora_b.safetensors")
    with pytest.raises(ModelFileError, match="several models"):
        open_model(tmp_path)
    (tmp_path / "lora_b.safetensors").unlink()
    with open_model(tmp_path) as reader:
        assert [t.name for t in reader.tensors()] == ["a"]


def test_walk_models_counts_pipelines_and_shard_sets_once(tmp_path: Path) -> None:
    _diffusers(tmp_path / "models" / "pipe")
    _sharded(tmp_path / "models" / "llm", {"model-00001-of-00002.safetensors": _weights("a"), "model-00002-of-00002.safetensors": _weights("b")})
    (tmp_path / "models" / "loras").mkdir()
    save_file(_weights("a"), tmp_path / "models" / "loras" / "one.safetensors")
    (tmp_path / "models" / "loras" / "notes.txt").write_text("not a model")
    write_zip(tmp_path / "models" / "loras" / "two.pt", *state_dict(_weights("b")))
    found = [p.relative_to(tmp_path / "models").as_posix() for p in walk_models(tmp_path / "models")]
    assert found == ["llm/model.safetensors.index.json", "loras/one.safetensors", "loras/two.pt", "pipe"]


def test_symlink_loops_are_clean_errors(tmp_path: Path) -> None:
    (tmp_path / "loop.safetensors").symlink_to(tmp_path / "loop.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "loop.safetensors"}}))
    with pytest.raises(ModelFileError, match="symlink loop"):
        open_model(tmp_path / "model.safetensors.index.json")
