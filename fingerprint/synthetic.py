"""Synthetic SD-1.5-like model families for tests, benchmarks and the demo (no real weights).

`Architecture` lays out an SD 1.5 checkpoint — LDM UNet (resnets, attention, resamplers), CLIP
text encoder, VAE, noise-schedule buffers, optional EMA copies — with every width divided by
`scale`, so a family of models builds in milliseconds. Each tensor is described once with both
its LDM name and its diffusers name, built from the block structure (independently of
`names.py`, so the renaming there is tested against a second derivation).

`Family(seed)` draws a base and derives models from it: fine-tunes whose per-tensor delta is
low-rank plus dense at 0.1–2 % of the base tensor's norm and shares a benign component with
every other fine-tune of the family (independent fine-tunes have delta cosines ≈ 0.1–0.3, as
real ones do), LoRAs (kohya and PEFT layouts) built the same way, and every transformation of
the robustness matrix. Everything is deterministic in the seeds.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np

Tensors = dict[str, np.ndarray]

_SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "posterior_variance")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the layout: LDM key, diffusers key (component-prefixed), shape and kind."""

    ldm: str
    diffusers: str
    shape: tuple[int, ...]
    kind: str  # "weight" (matrix/conv), "bias", "norm", "embedding"


@dataclass(frozen=True)
class Architecture:
    """An SD-1.5-shaped layout with widths divided by `scale` (1 gives the real shapes)."""

    scale: int = 10
    text_layers: int = 4
    vocab: int = 1000

    @property
    def specs(self) -> tuple[TensorSpec, ...]:
        return tuple(_unet(self) + _text_encoder(self) + _vae(self))


class _Layout:
    def __init__(self, ldm_prefix: str, diffusers_prefix: str) -> None:
        self.ldm_prefix, self.diffusers_prefix = ldm_prefix, diffusers_prefix
        self.specs: list[TensorSpec] = []

    def linear(self, ldm: str, dif: str, out: int, inp: int, *, bias: bool = True, kernel: int | None = None) -> None:
        shape = (out, inp) if kernel is None else (out, inp, kernel, kernel)
        self.specs.append(TensorSpec(f"{self.ldm_prefix}{ldm}.weight", f"{self.diffusers_prefix}{dif}.weight", shape, "weight"))
        if bias:
            self.specs.append(TensorSpec(f"{self.ldm_prefix}{ldm}.bias", f"{self.diffusers_prefix}{dif}.bias", (out,), "bias"))

    def norm(self, ldm: str, dif: str, width: int) -> None:
        for part in ("weight", "bias"):
            kind = "norm" if part == "weight" else "bias"
            self.specs.append(TensorSpec(f"{self.ldm_prefix}{ldm}.{part}", f"{self.diffusers_prefix}{dif}.{part}", (width,), kind))


def _unet_resnet(lay: _Layout, ldm: str, dif: str, inp: int, out: int, emb: int) -> None:
    lay.norm(f"{ldm}.in_layers.0", f"{dif}.norm1", inp)
    lay.linear(f"{ldm}.in_layers.2", f"{dif}.conv1", out, inp, kernel=3)
    lay.linear(f"{ldm}.emb_layers.1", f"{dif}.time_emb_proj", out, emb)
    lay.norm(f"{ldm}.out_layers.0", f"{dif}.norm2", out)
    lay.linear(f"{ldm}.out_layers.3", f"{dif}.conv2", out, out, kernel=3)
    if inp != out:
        lay.linear(f"{ldm}.skip_connection", f"{dif}.conv_shortcut", out, inp, kernel=1)


def _unet_attention(lay: _Layout, ldm: str, dif: str, ch: int, context: int) -> None:
    lay.norm(f"{ldm}.norm", f"{dif}.norm", ch)
    lay.linear(f"{ldm}.proj_in", f"{dif}.proj_in", ch, ch, kernel=1)
    block = "transformer_blocks.0"
    for attn, kv in (("attn1", ch), ("attn2", context)):
        for proj, width in (("to_q", ch), ("to_k", kv), ("to_v", kv)):
            lay.linear(f"{ldm}.{block}.{attn}.{proj}", f"{dif}.{block}.{attn}.{proj}", ch, width, bias=False)
        lay.linear(f"{ldm}.{block}.{attn}.to_out.0", f"{dif}.{block}.{attn}.to_out.0", ch, ch)
    lay.linear(f"{ldm}.{block}.ff.net.0.proj", f"{dif}.{block}.ff.net.0.proj", 8 * ch, ch)
    lay.linear(f"{ldm}.{block}.ff.net.2", f"{dif}.{block}.ff.net.2", ch, 4 * ch)
    for n in ("norm1", "norm2", "norm3"):
        lay.norm(f"{ldm}.{block}.{n}", f"{dif}.{block}.{n}", ch)
    lay.linear(f"{ldm}.proj_out", f"{dif}.proj_out", ch, ch, kernel=1)


def _unet(arch: Architecture) -> list[TensorSpec]:
    lay = _Layout("model.diffusion_model.", "unet.")
    base = 320 // arch.scale
    mults, context, emb = (1, 2, 4, 4), 768 // arch.scale, 4 * (320 // arch.scale)
    lay.linear("time_embed.0", "time_embedding.linear_1", emb, base)
    lay.linear("time_embed.2", "time_embedding.linear_2", emb, emb)
    lay.linear("input_blocks.0.0", "conv_in", base, 4, kernel=3)
    skips, ch, index = [base], base, 1
    for level, mult in enumerate(mults):
        out = base * mult
        for layer in range(2):
            _unet_resnet(lay, f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{layer}", ch, out, emb)
            ch = out
            if level < 3:
                _unet_attention(lay, f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{layer}", ch, context)
            skips.append(ch)
            index += 1
        if level < 3:
            lay.linear(f"input_blocks.{index}.0.op", f"down_blocks.{level}.downsamplers.0.conv", ch, ch, kernel=3)
            skips.append(ch)
            index += 1
    _unet_resnet(lay, "middle_block.0", "mid_block.resnets.0", ch, ch, emb)
    _unet_attention(lay, "middle_block.1", "mid_block.attentions.0", ch, context)
    _unet_resnet(lay, "middle_block.2", "mid_block.resnets.1", ch, ch, emb)
    index = 0
    for up, mult in enumerate(reversed(mults)):
        out = base * mult
        for layer in range(3):
            _unet_resnet(lay, f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{layer}", ch + skips.pop(), out, emb)
            ch = out
            if up > 0:
                _unet_attention(lay, f"output_blocks.{index}.1", f"up_blocks.{up}.attentions.{layer}", ch, context)
            if layer == 2 and up < 3:
                sub = 2 if up > 0 else 1
                lay.linear(f"output_blocks.{index}.{sub}.conv", f"up_blocks.{up}.upsamplers.0.conv", ch, ch, kernel=3)
            index += 1
    lay.norm("out.0", "conv_norm_out", base)
    lay.linear("out.2", "conv_out", 4, base, kernel=3)
    return lay.specs


def _text_encoder(arch: Architecture) -> list[TensorSpec]:
    lay = _Layout("cond_stage_model.transformer.text_model.", "text_encoder.text_model.")
    d = 768 // arch.scale
    lay.specs.append(TensorSpec(f"{lay.ldm_prefix}embeddings.token_embedding.weight",
                                f"{lay.diffusers_prefix}embeddings.token_embedding.weight", (arch.vocab, d), "embedding"))
    lay.specs.append(TensorSpec(f"{lay.ldm_prefix}embeddings.position_embedding.weight",
                                f"{lay.diffusers_prefix}embeddings.position_embedding.weight", (77, d), "embedding"))
    for i in range(arch.text_layers):
        p = f"encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lay.linear(f"{p}.self_attn.{proj}", f"{p}.self_attn.{proj}", d, d)
        lay.norm(f"{p}.layer_norm1", f"{p}.layer_norm1", d)
        lay.linear(f"{p}.mlp.fc1", f"{p}.mlp.fc1", 4 * d, d)
        lay.linear(f"{p}.mlp.fc2", f"{p}.mlp.fc2", d, 4 * d)
        lay.norm(f"{p}.layer_norm2", f"{p}.layer_norm2", d)
    lay.norm("final_layer_norm", "final_layer_norm", d)
    return lay.specs


def _vae_resnet(lay: _Layout, ldm: str, dif: str, inp: int, out: int) -> None:
    lay.norm(f"{ldm}.norm1", f"{dif}.norm1", inp)
    lay.linear(f"{ldm}.conv1", f"{dif}.conv1", out, inp, kernel=3)
    lay.norm(f"{ldm}.norm2", f"{dif}.norm2", out)
    lay.linear(f"{ldm}.conv2", f"{dif}.conv2", out, out, kernel=3)
    if inp != out:
        lay.linear(f"{ldm}.nin_shortcut", f"{dif}.conv_shortcut", out, inp, kernel=1)


def _vae_mid(lay: _Layout, coder: str, ch: int) -> None:
    _vae_resnet(lay, f"{coder}.mid.block_1", f"{coder}.mid_block.resnets.0", ch, ch)
    lay.norm(f"{coder}.mid.attn_1.norm", f"{coder}.mid_block.attentions.0.group_norm", ch)
    for ldm, dif in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        # LDM stores these as 1×1 convs, diffusers as linears: same 2-D view
        lay.specs.append(TensorSpec(f"{lay.ldm_prefix}{coder}.mid.attn_1.{ldm}.weight",
                                    f"{lay.diffusers_prefix}{coder}.mid_block.attentions.0.{dif}.weight", (ch, ch, 1, 1), "weight"))
        lay.specs.append(TensorSpec(f"{lay.ldm_prefix}{coder}.mid.attn_1.{ldm}.bias",
                                    f"{lay.diffusers_prefix}{coder}.mid_block.attentions.0.{dif}.bias", (ch,), "bias"))
    _vae_resnet(lay, f"{coder}.mid.block_2", f"{coder}.mid_block.resnets.1", ch, ch)


def _vae(arch: Architecture) -> list[TensorSpec]:
    lay = _Layout("first_stage_model.", "vae.")
    widths = [w // arch.scale for w in (128, 256, 512, 512)]
    lay.linear("encoder.conv_in", "encoder.conv_in", widths[0], 3, kernel=3)
    ch = widths[0]
    for level, out in enumerate(widths):
        for j in range(2):
            _vae_resnet(lay, f"encoder.down.{level}.block.{j}", f"encoder.down_blocks.{level}.resnets.{j}", ch, out)
            ch = out
        if level < 3:
            lay.linear(f"encoder.down.{level}.downsample.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv", ch, ch, kernel=3)
    _vae_mid(lay, "encoder", ch)
    lay.norm("encoder.norm_out", "encoder.conv_norm_out", ch)
    lay.linear("encoder.conv_out", "encoder.conv_out", 8, ch, kernel=3)
    lay.linear("quant_conv", "quant_conv", 8, 8, kernel=1)
    lay.linear("post_quant_conv", "post_quant_conv", 4, 4, kernel=1)
    lay.linear("decoder.conv_in", "decoder.conv_in", ch, 4, kernel=3)
    _vae_mid(lay, "decoder", ch)
    for level in reversed(range(4)):
        out, up = widths[level], 3 - level
        for j in range(3):
            _vae_resnet(lay, f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", ch, out)
            ch = out
        if level > 0:
            lay.linear(f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv", ch, ch, kernel=3)
    lay.norm("decoder.norm_out", "decoder.conv_norm_out", ch)
    lay.linear("decoder.conv_out", "decoder.conv_out", 3, ch, kernel=3)
    return lay.specs


# ---------------------------------------------------------------------------------------------
# weights


def _rng(*seed: int | str) -> np.random.Generator:
    digest = hashlib.blake2b(repr(seed).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _norm(array: np.ndarray) -> float:
    """Frobenius norm without BLAS (whose thread pool thrashes on small arrays on a busy machine)."""
    return float(np.sqrt(np.sum(np.square(array, dtype=np.float64))))


def _base_tensor(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "norm":
        return (1.0 + 0.1 * rng.standard_normal(spec.shape)).astype(np.float32)
    if spec.kind == "bias":
        return (0.02 * rng.standard_normal(spec.shape)).astype(np.float32)
    fan_in = int(np.prod(spec.shape[1:]))
    return (rng.standard_normal(spec.shape) / np.sqrt(fan_in)).astype(np.float32)


def _direction(shape: tuple[int, ...], rng: np.random.Generator, rank: int = 4) -> np.ndarray:
    """A unit-norm delta direction: low-rank (1/i spectrum) plus dense, like a fine-tune's update."""
    if len(shape) == 1:
        d = rng.standard_normal(shape, dtype=np.float32)
    else:
        rows, cols = shape[0], int(np.prod(shape[1:]))
        r = min(rank, rows, cols)
        low = (rng.standard_normal((rows, r)) / np.arange(1, r + 1)) @ rng.standard_normal((r, cols))
        low /= _norm(low)
        dense = rng.standard_normal((rows, cols), dtype=np.float32)
        d = (low + 0.5 * dense / _norm(dense)).reshape(shape)
    return d / _norm(d)


@dataclass(frozen=True)
class LoraFactors:
    """A LoRA as kohya stores it: per target (diffusers module name) up, down and alpha."""

    modules: Mapping[str, tuple[np.ndarray, np.ndarray, float]]  # diffusers module → (up, down, alpha)

    def delta(self, module: str) -> np.ndarray:
        """ΔW of one module: (alpha / rank) · up @ down."""
        up, down, alpha = self.modules[module]
        return (alpha / down.shape[0]) * (up @ down)


LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
                "attn2.to_out.0", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


@dataclass
class Family:
    """A base model and everything derived from it, all from one seed.

    `shared` (0–1) sets how much of each fine-tune's delta is the family's benign common
    direction; each fine-tune draws its own share in [shared_low, shared_high].
    """

    seed: int
    arch: Architecture = field(default_factory=Architecture)
    shared_low: float = 0.1
    shared_high: float = 0.3

    def __post_init__(self) -> None:
        self.specs = self.arch.specs
        self.by_ldm = {s.ldm: s for s in self.specs}
        rng = _rng(self.seed, "base")
        self.base = {s.ldm: _base_tensor(s, rng) for s in self.specs}
        self._common: dict[str, np.ndarray] = {}

    # --- checkpoints -----------------------------------------------------------------------
    def checkpoint(self, tensors: Tensors, *, ema: bool = False) -> Tensors:
        """A full LDM single-file checkpoint: tensors plus schedule buffers, position_ids, optional EMA copies."""
        out = dict(tensors)
        out.update({name: np.linspace(1e-4, 0.02, 1000, dtype=np.float32) for name in _SCHEDULE_BUFFERS})
        out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
        if ema:
            for name, array in tensors.items():
                if name.startswith("model.diffusion_model."):
                    out["model_ema." + name.removeprefix("model.").replace(".", "")] = array
        return out

    def common(self, name: str) -> np.ndarray:
        """The family's shared benign delta direction for one tensor (unit norm)."""
        if name not in self._common:
            self._common[name] = _direction(self.by_ldm[name].shape, _rng(self.seed, "common", name))
        return self._common[name]

    def delta(self, seed: int, size: float | None = None, *, text_encoder: bool = True, vae: bool = False) -> Tensors:
        """A fine-tune's delta: per tensor `size` (default: drawn in 0.1–2 %) × base norm, partly shared."""
        size = size if size is not None else self.delta_size(seed)
        share = _rng(self.seed, "share", seed).uniform(self.shared_low, self.shared_high)
        out = {}
        for spec in self.specs:
            component = spec.diffusers.split(".", 1)[0]
            if (component == "text_encoder" and not text_encoder) or (component == "vae" and not vae):
                continue
            own = _direction(spec.shape, _rng(self.seed, "own", seed, spec.ldm))
            direction = np.sqrt(share) * self.common(spec.ldm) + np.sqrt(1 - share) * own
            out[spec.ldm] = (size * _norm(self.base[spec.ldm]) * direction).astype(np.float32)
        return out

    def delta_size(self, seed: int) -> float:
        """The relative delta size fine-tune `seed` gets by default: log-uniform in 0.1–2 %."""
        return float(np.exp(_rng(self.seed, "size", seed).uniform(np.log(0.001), np.log(0.02))))

    def fine_tune(self, seed: int, size: float | None = None, **kwargs: bool) -> Tensors:
        """Base + delta(seed)."""
        return apply_delta(self.base, self.delta(seed, size, **kwargs))

    # --- LoRAs -----------------------------------------------------------------------------
    def lora(self, seed: int, rank: int = 32, size: float = 0.03, alpha: float | None = None) -> LoraFactors:
        """A LoRA on the attention projections: ΔW = (alpha/rank)·up@down at `size` × the base norm, partly shared."""
        rng = _rng(self.seed, "lora", seed)
        share = rng.uniform(self.shared_low, self.shared_high)
        alpha = float(rank) / 2 if alpha is None else alpha
        modules = {}
        for spec in self.specs:
            module = spec.diffusers.removesuffix(".weight")
            if spec.kind != "weight" or not module.endswith(LORA_TARGETS):
                continue
            out_dim, in_dim = spec.shape[0], int(np.prod(spec.shape[1:]))
            half = rank // 2
            crng, orng = _rng(self.seed, "lora-common", spec.ldm), _rng(self.seed, "lora-own", seed, spec.ldm)
            spectrum = 1.0 / np.arange(1, half + 1)
            common_up, own_up = crng.standard_normal((out_dim, half)) * spectrum, orng.standard_normal((out_dim, half)) * spectrum
            common_down, own_down = crng.standard_normal((half, in_dim)), orng.standard_normal((half, in_dim))
            common_up *= np.sqrt(share) / _norm(common_up @ common_down)
            own_up *= np.sqrt(1 - share) / _norm(own_up @ own_down)
            up = np.concatenate([common_up, own_up], axis=1)
            down = np.concatenate([common_down, own_down], axis=0)
            target = size * _norm(self.base[spec.ldm]) / _norm(up @ down)
            modules[module] = ((up * target * rank / alpha).astype(np.float32), down.astype(np.float32), alpha)
        return LoraFactors(modules)

    def merge_lora(self, tensors: Tensors, lora: LoraFactors, strength: float = 1.0) -> Tensors:
        """W ← W + strength·ΔW on the LoRA's targets (kohya merge_lora / "bake")."""
        by_module = {s.diffusers.removesuffix(".weight"): s for s in self.specs}
        out = dict(tensors)
        for module in lora.modules:
            spec = by_module[module]
            out[spec.ldm] = (tensors[spec.ldm] + strength * lora.delta(module).reshape(spec.shape)).astype(np.float32)
        return out

    def diffusers_names(self, tensors: Tensors) -> Tensors:
        """The same tensors under diffusers names, `unet.` / `text_encoder.` / `vae.` prefixed."""
        return {self.by_ldm[n].diffusers: a.reshape(-1, a.shape[1]) if ".mid_block.attentions.0.to_" in self.by_ldm[n].diffusers
                and a.ndim == 4 else a for n, a in tensors.items() if n in self.by_ldm}


# ---------------------------------------------------------------------------------------------
# transformations (the robustness matrix)


def apply_delta(tensors: Tensors, delta: Mapping[str, np.ndarray], weight: float = 1.0) -> Tensors:
    """tensors + weight·delta (on the tensors the delta covers)."""
    return {n: (a + weight * delta[n]).astype(np.float32) if n in delta else a for n, a in tensors.items()}


def weighted_sum(a: Tensors, b: Tensors, alpha: float) -> Tensors:
    """alpha·a + (1 − alpha)·b on the keys both hold (A1111 weighted sum)."""
    return {n: (alpha * a[n] + (1 - alpha) * b[n]).astype(np.float32) for n in a if n in b}


def add_difference(a: Tensors, b: Tensors, c: Tensors, m: float) -> Tensors:
    """a + m·(b − c) (A1111 add difference; a key missing from c counts as zero)."""
    return {n: (a[n] + m * (b[n] - c.get(n, 0))).astype(np.float32) if n in b else a[n] for n in a}


def resave(tensors: Tensors, dtype: str) -> Tensors:
    """Float tensors cast to "fp16", "bf16" or "fp32" (a re-save in another precision)."""
    target = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "fp32": np.float32}[dtype]
    return {n: a.astype(target) if a.dtype.kind in "fV" else a for n, a in tensors.items()}


def add_noise(tensors: Tensors, delta: Mapping[str, np.ndarray], ratio: float, seed: int) -> Tensors:
    """Gaussian noise per tensor with norm `ratio` × the given delta's norm on that tensor."""
    out = dict(tensors)
    for n, d in delta.items():
        noise = _rng(seed, "noise", n).standard_normal(d.shape)
        out[n] = (tensors[n] + ratio * _norm(d) * noise / _norm(noise)).astype(np.float32)
    return out


def drop(tensors: Tensors, *prefixes: str) -> Tensors:
    """The tensors whose names start with none of the prefixes ("pruning")."""
    return {n: a for n, a in tensors.items() if not n.startswith(prefixes)}


def kohya_layout(lora: LoraFactors, dtype: str = "fp32") -> Tensors:
    """kohya keys: `lora_unet_<module_with_underscores>.lora_up/down.weight` and `.alpha`."""
    out: Tensors = {}
    for module, (up, down, alpha) in lora.modules.items():
        component, path = module.split(".", 1)
        prefix = "lora_unet_" if component == "unet" else "lora_te_"
        stem = prefix + path.replace(".", "_")
        out[f"{stem}.lora_up.weight"], out[f"{stem}.lora_down.weight"] = up, down
        out[f"{stem}.alpha"] = np.array(alpha, dtype=np.float32)
    return resave(out, dtype)


def peft_layout(lora: LoraFactors, dtype: str = "fp32", prefix: str = "") -> Tensors:
    """PEFT/diffusers keys: `<prefix>unet.<module>.lora_A/lora_B.weight`, the alpha/r scale folded into lora_B."""
    out: Tensors = {}
    for module, (up, down, alpha) in lora.modules.items():
        out[f"{prefix}{module}.lora_A.weight"] = down
        out[f"{prefix}{module}.lora_B.weight"] = (up * (alpha / down.shape[0])).astype(np.float32)
    return resave(out, dtype)


def write_peft_adapter(folder: str | Path, lora: LoraFactors, dtype: str = "fp32", *, rslora: bool = False,
                       dora: bool = False) -> Path:
    """A PEFT adapter folder as `save_pretrained` writes it: unscaled lora_A/lora_B in
    `adapter_model.safetensors` and lora_alpha / r in `adapter_config.json` (all modules share one
    rank and alpha). rsLoRA scales by lora_alpha/√r, so lora_B is rescaled to keep ΔW; `dora` adds
    `lora_magnitude_vector`s (the row norms of ΔW, standing in for the unknown base's)."""
    ranks = {(down.shape[0], alpha) for _, down, alpha in lora.modules.values()}
    if len(ranks) != 1:
        raise ValueError("write_peft_adapter needs one rank and alpha for every module")
    ((rank, alpha),) = ranks
    out: Tensors = {}
    for module, (up, down, _) in lora.modules.items():
        stem = f"base_model.model.{module}"
        out[f"{stem}.lora_A.weight"] = down
        out[f"{stem}.lora_B.weight"] = (up * (np.sqrt(rank) / rank if rslora else 1.0)).astype(np.float32)
        if dora:
            out[f"{stem}.lora_magnitude_vector"] = np.linalg.norm(lora.delta(module), axis=1).astype(np.float32)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "adapter_model.safetensors", resave(out, dtype))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": rslora, "use_dora": dora,
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in lora.modules})}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder / "adapter_model.safetensors"


def resize_lora(lora: LoraFactors, rank: int) -> LoraFactors:
    """kohya resize_lora: SVD of up@down, keep `rank` values, alpha' = (alpha/r)·rank."""
    modules = {}
    for module, (up, down, alpha) in lora.modules.items():
        u, s, vh = np.linalg.svd(up.astype(np.float64) @ down.astype(np.float64), full_matrices=False)
        new_up, new_down = u[:, :rank] * s[:rank], vh[:rank]
        modules[module] = (new_up.astype(np.float32), new_down.astype(np.float32), alpha / down.shape[0] * rank)
    return LoraFactors(modules)


def shards(tensors: Tensors, count: int) -> Iterator[Tensors]:
    """The tensors split into `count` roughly equal shards (by name order)."""
    names = sorted(tensors)
    for i in range(count):
        yield {n: tensors[n] for n in names[i::count]}


# ---------------------------------------------------------------------------------------------
# files


def dtype_name(dtype: np.dtype) -> str:
    """The safetensors dtype name of a numpy dtype ("F16", "BF16", ...)."""
    from modelsieve.fingerprint.dtypes import DTYPES

    wanted = np.dtype(dtype).newbyteorder("<")
    return next(d.name for d in DTYPES.values() if d.numpy == wanted)


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
                      *, order: list[str] | None = None) -> Path:
    """Write a safetensors file with the tensors in the given order (default: sorted by name)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset, blobs = 0, []
    for name in order or sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype_name(array.dtype), "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = Path(path)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))
    return path


def write_sharded(folder: str | Path, tensors: Mapping[str, np.ndarray], count: int) -> Path:
    """A sharded checkpoint (`model-0000i-of-0000n.safetensors` + index); returns the index path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, shard in enumerate(shards(dict(tensors), count), start=1):
        name = f"model-{i:05d}-of-{count:05d}.safetensors"
        write_safetensors(folder / name, shard)
        weight_map.update({tensor: name for tensor in shard})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map}))
    return index


_DIFFUSERS_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                    "text_encoder": "model.safetensors"}


def write_diffusers(folder: str | Path, tensors: Mapping[str, np.ndarray]) -> Path:
    """A diffusers pipeline folder from component-prefixed diffusers names (`Family.diffusers_names`)."""
    folder = Path(folder)
    components: dict[str, Tensors] = {}
    for name, array in tensors.items():
        component, rest = name.split(".", 1)
        components.setdefault(component, {})[rest] = array
    for component, part in components.items():
        (folder / component).mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / component / _DIFFUSERS_FILES[component], part)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
             **{component: ["diffusers", "ModelMixin"] for component in components}}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
