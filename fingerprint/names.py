"""One canonical tensor naming for Stable-Diffusion-style models, whatever layout a file uses.

Canonical names are `<component>.<diffusers module path>.<parameter>`, component one of `unet`,
`text_encoder`, `text_encoder_2`, `vae`, e.g. `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`.
Understood layouts: original LDM / A1111 single files (`model.diffusion_model.*`,
`cond_stage_model.transformer.*`, `first_stage_model.*`, SDXL `conditioner.embedders.*`),
diffusers (bare or component-prefixed, `unet/...` from folder readers), and the module paths of
kohya (`lora_unet_*`, `lora_te_*`, `lora_te1_*`) and PEFT (`base_model.model.*`) adapters.
The LDM ↔ diffusers correspondence follows diffusers' single-file conversion and kohya's
`library/model_util.py` (per-block renames; the VAE's 1×1 attention convs and the diffusers
linears share a 2-D view, so their sketches agree without reshaping).
OpenCLIP text encoders in LDM files (SD 2.x `cond_stage_model.model.*`, SDXL
`conditioner.embedders.1.model.*`, the SDXL refiner's `conditioner.embedders.0.model.*`) map to
the transformers CLIP names diffusers converts them to; two of their tensors need more than a
rename (done on the arrays by `fuzzy`): the fused `attn.in_proj_weight`/`_bias` stacks q, k and v
(`split_fused` names the three parts) and `text_projection` is stored transposed
(`stored_transposed`).
A key with no known layout keeps its own name under `other.`; the base registry then resolves
such tensors by shape and sketch.
"""

from __future__ import annotations

import functools
import re

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")
LAYERS_PER_BLOCK = 2  # SD 1.x, 2.x and SDXL UNets: two resnets (+ attentions) per level, then a resampler
VAE_LEVELS = 4
NAME_CACHE_SIZE = 1 << 14  # tensor names whose canonical name and role stay cached: a few architectures' worth

_LDM_BUFFERS = frozenset(
    "betas alphas_cumprod alphas_cumprod_prev sqrt_alphas_cumprod sqrt_one_minus_alphas_cumprod "
    "log_one_minus_alphas_cumprod sqrt_recip_alphas_cumprod sqrt_recipm1_alphas_cumprod posterior_variance "
    "posterior_log_variance_clipped posterior_mean_coef1 posterior_mean_coef2 logvar".split()
)
_PREFIXES = (  # checkpoint key prefix → component, in the order they are tried
    ("model.diffusion_model.", "unet"),
    ("cond_stage_model.transformer.", "text_encoder"),
    ("conditioner.embedders.0.transformer.", "text_encoder"),
    ("conditioner.embedders.1.model.", "text_encoder_2"),
    ("conditioner.embedders.0.model.", "text_encoder_2"),  # the SDXL refiner's only (OpenCLIP) encoder
    ("cond_stage_model.model.", "text_encoder"),
    ("first_stage_model.", "vae"),
    *((f"{c}.", c) for c in COMPONENTS),
)
_OPEN_CLIP_PREFIXES = ("conditioner.embedders.1.model.", "conditioner.embedders.0.model.", "cond_stage_model.model.")
_OPEN_CLIP_NAMES = {  # whole-name renames (after the optional `transformer.` level)
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",
}
_OPEN_CLIP_BLOCK = (("resblocks.", "text_model.encoder.layers."), (".ln_1.", ".layer_norm1."), (".ln_2.", ".layer_norm2."),
                    (".mlp.c_fc.", ".mlp.fc1."), (".mlp.c_proj.", ".mlp.fc2."), (".attn.", ".self_attn."),
                    (".in_proj_weight", ".in_proj.weight"), (".in_proj_bias", ".in_proj.bias"))
_FUSED_QKV = ".self_attn.in_proj."
_BARE_UNET = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_norm_out.", "conv_out.", "time_embedding.",
              "add_embedding.", "input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.", "label_emb.")
_BARE_VAE = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
           "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0",
                  "query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_COMPOUNDS = sorted(
    (tuple(word.split("_")) for word in (
        "down_blocks up_blocks mid_block transformer_blocks to_q to_k to_v to_out proj_in proj_out conv_in conv_out "
        "conv_shortcut time_emb_proj time_embedding linear_1 linear_2 conv_norm_out text_model self_attn q_proj k_proj "
        "v_proj out_proj layer_norm1 layer_norm2 final_layer_norm token_embedding position_embedding input_blocks "
        "output_blocks middle_block in_layers out_layers emb_layers skip_connection time_embed label_emb add_embedding "
        "text_projection"
    ).split()),
    key=len,
    reverse=True,
)


def _rename_resnet(tail: str) -> str:
    for old, new in _RESNET.items():
        if tail == old or tail.startswith(old + "."):
            return new + tail[len(old):]
    return tail


def _ldm_unet(path: str) -> str:
    """An LDM UNet key (after `model.diffusion_model.`) in diffusers naming."""
    parts = path.split(".")
    head = parts[0]
    if head in ("time_embed", "label_emb", "out") and len(parts) >= 3:
        position = parts[2] if head == "label_emb" else parts[1]
        rest = parts[3:] if head == "label_emb" else parts[2:]
        target = {"time_embed": "time_embedding", "label_emb": "add_embedding"}.get(head)
        if target is not None and position in ("0", "2"):
            return ".".join([target, "linear_1" if position == "0" else "linear_2", *rest])
        if head == "out" and position in ("0", "2"):
            return ".".join(["conv_norm_out" if position == "0" else "conv_out", *rest])
        return path
    if head not in ("input_blocks", "middle_block", "output_blocks") or len(parts) < 3 or not parts[1].isdigit():
        return path
    if head == "middle_block":
        target = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}.get(parts[1])
        tail = ".".join(parts[2:])
        if target is None:
            return path
        return f"{target}.{_rename_resnet(tail) if 'resnets' in target else tail}"
    if not parts[2].isdigit():
        return path
    index, sub, tail = int(parts[1]), int(parts[2]), ".".join(parts[3:])
    per_level = LAYERS_PER_BLOCK + 1
    if head == "input_blocks":
        if index == 0:
            return f"conv_in.{tail}"
        level, layer = divmod(index - 1, per_level)
        if tail.startswith("op."):
            return f"down_blocks.{level}.downsamplers.0.conv.{tail[3:]}"
        kind = "resnets" if sub == 0 else "attentions"
        return f"down_blocks.{level}.{kind}.{layer}.{_rename_resnet(tail) if sub == 0 else tail}"
    level, layer = divmod(index, per_level)
    if sub == 0:
        return f"up_blocks.{level}.resnets.{layer}.{_rename_resnet(tail)}"
    if tail.startswith("conv."):
        return f"up_blocks.{level}.upsamplers.0.{tail}"
    return f"up_blocks.{level}.attentions.{layer}.{tail}"


def _vae(path: str) -> str:
    """A VAE key (LDM or legacy diffusers) in current diffusers naming; diffusers keys pass unchanged."""
    parts = path.split(".")
    if len(parts) < 2 or parts[0] not in ("encoder", "decoder"):
        return path
    coder, rest = parts[0], parts[1:]
    if rest[0] == "norm_out":
        rest = ["conv_norm_out", *rest[1:]]
    elif rest[0] in ("down", "up") and len(rest) >= 3 and rest[1].isdigit():
        level = int(rest[1]) if rest[0] == "down" else VAE_LEVELS - 1 - int(rest[1])
        blocks = f"{rest[0]}_blocks"
        if rest[2] == "block" and len(rest) >= 4:
            rest = [blocks, str(level), "resnets", *rest[3:]]
        elif rest[2] in ("downsample", "upsample"):
            rest = [blocks, str(level), f"{rest[2]}rs", "0", *rest[3:]]
    elif rest[0] == "mid" and len(rest) >= 2:
        target = {"block_1": ["resnets", "0"], "block_2": ["resnets", "1"], "attn_1": ["attentions", "0"]}.get(rest[1])
        if target is not None:
            rest = ["mid_block", *target, *rest[2:]]
    if rest[:3] == ["mid_block", "attentions", "0"] and len(rest) >= 4 and rest[3] in _VAE_ATTENTION:
        rest = [*rest[:3], *_VAE_ATTENTION[rest[3]].split("."), *rest[4:]]
    return ".".join([coder, *rest]).replace("nin_shortcut", "conv_shortcut")


def _open_clip(path: str) -> str | None:
    """An OpenCLIP text-encoder key (after its LDM prefix) in transformers CLIP naming; None for logit_scale."""
    path = path.removeprefix("transformer.")
    if path in _OPEN_CLIP_NAMES:
        return _OPEN_CLIP_NAMES[path]
    if path == "logit_scale":
        return None
    if path.startswith("resblocks."):
        for old, new in _OPEN_CLIP_BLOCK:
            path = path.replace(old, new, 1)
    return path


def split_fused(name: str) -> tuple[str, str, str] | None:
    """The canonical q, k, v names whose rows (in that order) a fused OpenCLIP `self_attn.in_proj` tensor stacks."""
    if _FUSED_QKV not in name:
        return None
    head, tail = name.split(_FUSED_QKV, 1)
    return tuple(f"{head}.self_attn.{p}.{tail}" for p in ("q_proj", "k_proj", "v_proj"))  # type: ignore[return-value]


def stored_transposed(key: str) -> bool:
    """True for keys whose matrix the canonical layout holds transposed (OpenCLIP's `text_projection`)."""
    return key.endswith(".text_projection") and key.startswith(_OPEN_CLIP_PREFIXES)


def _normalise(component: str, path: str) -> str:
    if component == "unet":
        return _ldm_unet(path)
    if component == "vae":
        return _vae(path)
    if component == "text_encoder" and not path.startswith("text_model.") and path.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
        return "text_model." + path  # old transformers / LDM keys without the text_model level
    return path


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)  # pure; a crawl meets the same names in file after file
def canonical_name(key: str) -> str | None:
    """The canonical name of a checkpoint tensor key; None for keys fingerprints leave out.

    Left out: EMA copies (`model_ema.*`), LDM noise-schedule buffers and CLIP `position_ids`.
    """
    key = key.replace("/", ".", 1) if "/" in key and key.split("/", 1)[0] in COMPONENTS else key
    if key.startswith("model_ema.") or key in _LDM_BUFFERS or key.endswith("position_ids"):
        return None
    for prefix, component in _PREFIXES:
        if key.startswith(prefix):
            path = _open_clip(key[len(prefix):]) if prefix in _OPEN_CLIP_PREFIXES else _normalise(component, key[len(prefix):])
            return None if path is None else f"{component}.{path}"
    if key.startswith(_BARE_UNET):
        return f"unet.{_ldm_unet(key)}"
    if key.startswith(_BARE_VAE):
        return f"vae.{_vae(key)}"
    if key.startswith("text_model."):
        return f"text_encoder.{key}"
    return f"other.{key}"


def _dotted(underscored: str) -> str:
    """kohya's `down_blocks_0_attentions_0_proj_in` back to `down_blocks.0.attentions.0.proj_in`."""
    words, out, i = underscored.split("_"), [], 0
    while i < len(words):
        for compound in _COMPOUNDS:
            if tuple(words[i : i + len(compound)]) == compound:
                out.append("_".join(compound))
                i += len(compound)
                break
        else:
            out.append(words[i])
            i += 1
    return ".".join(out)


_KOHYA = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder"))
_OLD_DIFFUSERS_PROCESSOR = re.compile(r"\.processor\.(to_[qkv]|to_out)_lora$")


def module_weight_name(module: str) -> str:
    """The canonical weight name of the layer an adapter module patches.

    `module` is the key stem before the adapter suffix: kohya `lora_unet_down_blocks_0_..._to_q`,
    PEFT `base_model.model.down_blocks.0....to_q`, diffusers `unet.down_blocks.0....to_q` or the
    old attention-processor form `unet....attn1.processor.to_q_lora`.
    """
    for prefix, component in _KOHYA:
        if module.startswith(prefix):
            path = _dotted(module[len(prefix):])
            return f"{component}.{_normalise(component, path)}.weight"
    module = module.removeprefix("base_model.model.")
    processor = _OLD_DIFFUSERS_PROCESSOR.search(module)
    if processor:
        projection = processor.group(1)
        module = module[: processor.start()] + "." + ("to_out.0" if projection == "to_out" else projection)
    name = canonical_name(module + ".weight")
    return name if name is not None else f"other.{module}.weight"


def component_of(name: str) -> str:
    """`unet`, `text_encoder`, `text_encoder_2`, `vae` or `other`."""
    return name.split(".", 1)[0]


def block_of(name: str) -> str:
    """A coarse block for breakdowns: `unet.down_blocks.1`, `text_encoder.layers.5`, `vae.decoder`, ..."""
    parts = name.split(".")
    component = parts[0]
    if component == "unet" and len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
        return ".".join(parts[:3])
    if component == "unet" and parts[1:2] == ["mid_block"]:
        return "unet.mid_block"
    if component.startswith("text_encoder") and "layers" in parts:
        index = parts.index("layers")
        if index + 1 < len(parts):
            return f"{component}.layers.{parts[index + 1]}"
    if component == "vae" and len(parts) > 2 and parts[1] in ("encoder", "decoder"):
        return f"vae.{parts[1]}"
    return f"{component}.other"


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def role_of(name: str) -> str:
    """The module's kind without its position: `attn2.to_k`, `self_attn.q_proj`, `resnets.conv1`, ..."""
    parts = [p for p in name.split(".")[1:-1] if not p.isdigit()]
    return ".".join(parts[-2:])
