"""Canonical tensor names: LDM, diffusers, kohya and PEFT layouts all land on one name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fuzzy import FingerprintKey, fingerprint_tensors, select_tensors
from modelsieve.fingerprint.names import block_of, canonical_name, component_of, module_weight_name, role_of
from modelsieve.fingerprint.readers import TensorInfo
from modelsieve.fingerprint.synthetic import Architecture

KEY = FingerprintKey("test", b"modelsieve test key 0001")

# Pairs checked by hand against diffusers' single-file conversion tables for SD 1.5.
LDM_TO_DIFFUSERS = {
    "model.diffusion_model.input_blocks.0.0.weight": "unet.conv_in.weight",
    "model.diffusion_model.time_embed.2.bias": "unet.time_embedding.linear_2.bias",
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": "unet.down_blocks.0.attentions.0.proj_in.weight",
    "model.diffusion_model.input_blocks.5.0.skip_connection.weight": "unet.down_blocks.1.resnets.1.conv_shortcut.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight": "unet.down_blocks.0.downsamplers.0.conv.weight",
    "model.diffusion_model.input_blocks.4.0.emb_layers.1.weight": "unet.down_blocks.1.resnets.0.time_emb_proj.weight",
    "model.diffusion_model.middle_block.2.out_layers.3.weight": "unet.mid_block.resnets.1.conv2.weight",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight":
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.output_blocks.2.1.conv.weight": "unet.up_blocks.0.upsamplers.0.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.bias": "unet.up_blocks.1.upsamplers.0.conv.bias",
    "model.diffusion_model.output_blocks.7.1.transformer_blocks.0.ff.net.2.weight":
        "unet.up_blocks.2.attentions.1.transformer_blocks.0.ff.net.2.weight",
    "model.diffusion_model.output_blocks.11.0.in_layers.0.weight": "unet.up_blocks.3.resnets.2.norm1.weight",
    "model.diffusion_model.out.2.weight": "unet.conv_out.weight",
    "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight":
        "text_encoder.text_model.encoder.layers.3.mlp.fc1.weight",
    "cond_stage_model.transformer.encoder.layers.3.self_attn.q_proj.bias":
        "text_encoder.text_model.encoder.layers.3.self_attn.q_proj.bias",
    "first_stage_model.decoder.up.3.block.0.conv1.weight": "vae.decoder.up_blocks.0.resnets.0.conv1.weight",
    "first_stage_model.decoder.up.1.upsample.conv.weight": "vae.decoder.up_blocks.2.upsamplers.0.conv.weight",
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": "vae.encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    "first_stage_model.encoder.mid.attn_1.q.weight": "vae.encoder.mid_block.attentions.0.to_q.weight",
    "first_stage_model.encoder.mid.attn_1.proj_out.bias": "vae.encoder.mid_block.attentions.0.to_out.0.bias",
    "first_stage_model.decoder.norm_out.weight": "vae.decoder.conv_norm_out.weight",
    "vae.encoder.mid_block.attentions.0.query.weight": "vae.encoder.mid_block.attentions.0.to_q.weight",
    "unet/down_blocks.0.resnets.0.conv1.weight": "unet.down_blocks.0.resnets.0.conv1.weight",
    "down_blocks.0.resnets.0.conv1.weight": "unet.down_blocks.0.resnets.0.conv1.weight",
    "text_model.final_layer_norm.weight": "text_encoder.text_model.final_layer_norm.weight",
}

ADAPTER_MODULES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0":
        "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0.weight",
    "lora_unet_mid_block_attentions_0_proj_in": "unet.mid_block.attentions.0.proj_in.weight",
    "lora_unet_down_blocks_1_resnets_0_time_emb_proj": "unet.down_blocks.1.resnets.0.time_emb_proj.weight",
    "lora_unet_up_blocks_0_resnets_2_conv_shortcut": "unet.up_blocks.0.resnets.2.conv_shortcut.weight",
    "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj":
        "unet.down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight",
    "lora_te_text_model_encoder_layers_11_mlp_fc2": "text_encoder.text_model.encoder.layers.11.mlp.fc2.weight",
    "lora_te2_text_model_encoder_layers_5_self_attn_out_proj":
        "text_encoder_2.text_model.encoder.layers.5.self_attn.out_proj.weight",
    # SDXL kohya LoRAs use LDM block names
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q":
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "lora_unet_output_blocks_3_0_in_layers_2": "unet.up_blocks.1.resnets.0.conv1.weight",
    "base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0":
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight",
    "unet.up_blocks.3.attentions.1.transformer_blocks.0.attn2.to_k":
        "unet.up_blocks.3.attentions.1.transformer_blocks.0.attn2.to_k.weight",
    "text_encoder.text_model.encoder.layers.2.self_attn.v_proj": "text_encoder.text_model.encoder.layers.2.self_attn.v_proj.weight",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora":
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
}


@pytest.mark.parametrize(("key", "expected"), LDM_TO_DIFFUSERS.items())
def test_checkpoint_keys_map_to_diffusers_names(key: str, expected: str) -> None:
    assert canonical_name(key) == expected


@pytest.mark.parametrize(("module", "expected"), ADAPTER_MODULES.items())
def test_adapter_modules_map_to_the_weight_they_patch(module: str, expected: str) -> None:
    assert module_weight_name(module) == expected


def test_every_synthetic_ldm_key_maps_to_its_structurally_built_diffusers_name() -> None:
    specs = Architecture(scale=20).specs
    assert len(specs) > 900
    assert [canonical_name(s.ldm) for s in specs] == [s.diffusers for s in specs]
    assert [canonical_name(s.diffusers) for s in specs] == [s.diffusers for s in specs]


@pytest.mark.parametrize("key", ["model_ema.diffusion_modelinput_blocks00weight", "alphas_cumprod",
                                 "cond_stage_model.transformer.text_model.embeddings.position_ids"])
def test_ema_copies_and_buffers_are_left_out(key: str) -> None:
    assert canonical_name(key) is None


def test_unknown_keys_keep_their_name_and_breakdowns_group_sensibly() -> None:
    assert canonical_name("my.custom.layer.weight") == "other.my.custom.layer.weight"
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert (component_of(name), block_of(name), role_of(name)) == ("unet", "unet.down_blocks.1", "attn2.to_k")
    te = "text_encoder.text_model.encoder.layers.7.self_attn.q_proj.weight"
    assert (block_of(te), role_of(te)) == ("text_encoder.layers.7", "self_attn.q_proj")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789./", max_size=80))
def test_any_key_gets_a_name_or_is_left_out_without_raising(key: str) -> None:
    name = canonical_name(key)
    assert name is None or name.split(".", 1)[0] in ("unet", "text_encoder", "text_encoder_2", "vae", "other")
    assert module_weight_name(key or "x").endswith(".weight")


# --- OpenCLIP text encoders (SD 2.x, SDXL) in LDM layout --------------------------------------------
# Names checked against diffusers' `convert_open_clip_checkpoint` tables: resblocks → encoder.layers,
# ln_1/ln_2 → layer_norm1/2, mlp.c_fc/c_proj → mlp.fc1/fc2, attn → self_attn, in_proj split in q/k/v,
# text_projection stored transposed.
OPEN_CLIP_KEYS = {
    "cond_stage_model.model.transformer.resblocks.3.ln_1.weight": "text_encoder.text_model.encoder.layers.3.layer_norm1.weight",
    "cond_stage_model.model.transformer.resblocks.3.mlp.c_proj.bias": "text_encoder.text_model.encoder.layers.3.mlp.fc2.bias",
    "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight":
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.weight",
    "cond_stage_model.model.positional_embedding": "text_encoder.text_model.embeddings.position_embedding.weight",
    "cond_stage_model.model.ln_final.bias": "text_encoder.text_model.final_layer_norm.bias",
    "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight": "text_encoder_2.text_model.encoder.layers.31.mlp.fc1.weight",
    "conditioner.embedders.1.model.token_embedding.weight": "text_encoder_2.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.text_projection": "text_encoder_2.text_projection.weight",
    "conditioner.embedders.0.model.transformer.resblocks.2.ln_2.bias": "text_encoder_2.text_model.encoder.layers.2.layer_norm2.bias",
}


@pytest.mark.parametrize(("key", "expected"), OPEN_CLIP_KEYS.items())
def test_open_clip_keys_map_to_transformers_clip_names(key: str, expected: str) -> None:
    assert canonical_name(key) == expected
    assert canonical_name("conditioner.embedders.1.model.logit_scale") is None


def _open_clip_pair(prefix: str, component: str, width: int = 24, layers: int = 2) -> tuple[dict, dict]:
    """The same random OpenCLIP text encoder as an LDM file's keys and as diffusers' (split and transposed by hand)."""
    rng = np.random.default_rng(5)
    ldm, diffusers = {}, {}
    for layer in range(layers):
        q, k, v = (rng.standard_normal((width, width)).astype(np.float32) for _ in range(3))
        qb, kb, vb = (rng.standard_normal(width).astype(np.float32) for _ in range(3))
        block, out = f"{prefix}transformer.resblocks.{layer}.", f"{component}.text_model.encoder.layers.{layer}."
        ldm[block + "attn.in_proj_weight"], ldm[block + "attn.in_proj_bias"] = np.concatenate([q, k, v]), np.concatenate([qb, kb, vb])
        for name, array in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            diffusers[f"{out}self_attn.{name}.weight"] = array
        for name, array in (("q_proj", qb), ("k_proj", kb), ("v_proj", vb)):
            diffusers[f"{out}self_attn.{name}.bias"] = array
        fc = rng.standard_normal((4 * width, width)).astype(np.float32)
        ldm[block + "mlp.c_fc.weight"], diffusers[out + "mlp.fc1.weight"] = fc, fc
    projection = rng.standard_normal((width, width // 2)).astype(np.float32)  # OpenCLIP: (width, embed)
    ldm[prefix + "text_projection"], diffusers[f"{component}.text_projection.weight"] = projection, projection.T.copy()
    return ldm, diffusers


@pytest.mark.parametrize(("prefix", "component"), [("cond_stage_model.model.", "text_encoder"),
                                                   ("conditioner.embedders.1.model.", "text_encoder_2")])
def test_open_clip_ldm_and_diffusers_layouts_fingerprint_identically(prefix: str, component: str) -> None:
    ldm, diffusers = _open_clip_pair(prefix, component)
    a, b = fingerprint_tensors(ldm, KEY), fingerprint_tensors(diffusers, KEY)
    assert set(a.sketches) == set(b.sketches) and len(a.sketches) == len(diffusers)
    for name in a.sketches:
        np.testing.assert_allclose(a.sketches[name], b.sketches[name], rtol=1e-6, atol=1e-6, err_msg=name)
        assert a.shapes[name] == b.shapes[name]


def test_partial_reads_fetch_the_fused_open_clip_attention() -> None:
    ldm, _ = _open_clip_pair("cond_stage_model.model.", "text_encoder")
    chosen = {i.name for i in select_tensors([TensorInfo(n, "F32", a.shape) for n, a in ldm.items()], budget_fraction=0.0)}
    assert chosen == {n for n in ldm if "in_proj" in n}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
                        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
                        "conditioner.embedders.1.model.text_projection"]),
       st.lists(st.integers(1, 7), min_size=1, max_size=3))
def test_hostile_open_clip_shapes_fingerprint_or_fail_cleanly(key: str, shape: list[int]) -> None:
    array = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        fp = fingerprint_tensors({key: array}, KEY)
    except FingerprintError:
        return
    assert fp.sketches and all(np.isfinite(s).all() for s in fp.sketches.values())
    split = "in_proj" in key and shape[0] % 3 == 0
    assert any("q_proj" in n for n in fp.sketches) == split
