"""The fuzzy-fingerprint robustness matrix, fingerprint throughput and size.

For synthetic SD-1.5-shaped families (fingerprint/synthetic.py: listed fine-tunes with deltas at
0.1–2 % of the base norm sharing a benign component, so independent siblings correlate at
0.1–0.3 like real ones; LoRAs in kohya layout) it derives every near-copy of the issue's matrix,
fingerprints it for real (file dtypes, renames, readers) and compares it with its listed model.
Hard negatives: every pair of independent fine-tunes, of independent LoRAs, LoRAs against
unrelated fine-tunes, the base itself, and models of another base.

Every comparison is scored twice: plain (raw delta cosine, threshold DEFAULT_THRESHOLD) and with
the benign `Background` of a separate cohort projected out (residual cosine, RESIDUAL_THRESHOLD;
the coefficient's least squares likewise).
Prints, per row: TPR at each operating threshold, the weakest positive score, the coefficient
error (plain / background removed); per negative group: the highest score and FPR (both ways); the candidate-search recall and candidate fraction
at the Hamming cut; throughput against hashlib SHA-256 on the same file; fingerprint size.

    nice -n 19 .venv/bin/python bench/nearcopy.py            # full run (~30 minutes on a busy 2-core machine)
    nice -n 19 .venv/bin/python bench/nearcopy.py --quick    # a smaller, faster run
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
import time
import weakref
from collections import defaultdict
from pathlib import Path

import ml_dtypes
import numpy as np

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fuzzy import (
    CANDIDATE_MAX_HAMMING,
    DEFAULT_THRESHOLD,
    RESIDUAL_THRESHOLD,
    Background,
    BaseModel,
    Comparison,
    Fingerprint,
    FingerprintKey,
    compare,
    fingerprint_model,
    background_directions,
    fingerprint_tensors,
    hamming_distances,
    index_vectors,
    select_tensors,
    sign_codes,
)
from modelsieve.fingerprint.readers import TensorInfo, open_model

KEY = FingerprintKey("bench", b"modelsieve bench key, synthetic only")


BACKGROUND: dict[str, np.ndarray] = {}  # benign index directions from a separate cohort (set in main)
SKETCH_BACKGROUND: list[Background] = []  # the same cohort's per-tensor benign directions (set in main)


_CODES: weakref.WeakKeyDictionary[Fingerprint, tuple[dict[str, bytes], dict[str, bytes]]] = weakref.WeakKeyDictionary()


def _codes(fp: Fingerprint, variant: int) -> dict[str, bytes]:
    if fp not in _CODES:
        _CODES[fp] = (sign_codes(fp), sign_codes(fp, BACKGROUND))
    return _CODES[fp][variant]


def hamming(query: Fingerprint, listed: Fingerprint) -> tuple[int, int]:
    """The smallest Hamming distance over the components both index (what a store's scan sees),
    without and with the cohort's benign direction projected out."""
    distances = []
    for variant in (0, 1):
        q, l = _codes(query, variant), _codes(listed, variant)
        shared = [c for c in q if c in l]
        distances.append(min((int(hamming_distances(q[c], np.frombuffer(l[c], np.uint8)[None])[0]) for c in shared),
                             default=10**6))
    return distances[0], distances[1]


Positive = tuple[float, float, float, float, float | None, tuple[int, int]]  # score, residual, coef plain, coef bg, expected, hamming
Negative = tuple[float, float, tuple[int, int]]  # score, residual, hamming


class Matrix:
    def __init__(self) -> None:
        self.rows: dict[str, list[Positive]] = defaultdict(list)
        self.negatives: dict[str, list[Negative]] = defaultdict(list)

    @staticmethod
    def _both(query: Fingerprint, listed: Fingerprint) -> tuple[Comparison, Comparison]:
        return compare(query, listed, breakdown=False), compare(query, listed, breakdown=False, background=SKETCH_BACKGROUND[0])

    def positive(self, row: str, query: Fingerprint, listed: Fingerprint, expected: float | None = None) -> None:
        plain, removed = self._both(query, listed)
        self.rows[row].append((plain.score, removed.score, plain.coefficient, removed.coefficient, expected, hamming(query, listed)))

    def negative(self, group: str, query: Fingerprint | None, listed: Fingerprint) -> None:
        if query is None or not query.is_delta:  # no registered base fits: never comparable, never a match
            self.negatives[group].append((0.0, 0.0, (10**6, 10**6)))
            return
        plain, removed = self._both(query, listed)
        self.negatives[group].append((plain.score, removed.score, hamming(query, listed)))

    def report(self) -> str:
        lines = ["| query derived from the listed model | n | TPR (plain / bg removed) | weakest score (plain / bg removed) "
                 "| coefficient error mean / max (plain; bg removed) | candidate recall (plain / bg removed) |",
                 "|---|---|---|---|---|---|"]
        for row, results in self.rows.items():
            plain, removed = np.array([r[0] for r in results]), np.array([r[1] for r in results])
            coef = "–"
            if results[0][4] is not None:
                errors = [np.abs([r[k] - r[4] for r in results]) for k in (2, 3)]
                coef = "; ".join(f"{e.mean():.3f} / {e.max():.3f}" for e in errors)
            recall = [np.mean([r[5][v] <= CANDIDATE_MAX_HAMMING for r in results]) for v in (0, 1)]
            lines.append(f"| {row} | {len(results)} | {np.mean(plain >= DEFAULT_THRESHOLD):.3f} / "
                         f"{np.mean(removed >= RESIDUAL_THRESHOLD):.3f} | {plain.min():.3f} / {removed.min():.3f} | {coef} | "
                         f"{recall[0]:.3f} / {recall[1]:.3f} |")
        lines += ["", "| hard negative | pairs | highest score (plain / bg removed) | FPR (plain / bg removed) "
                  "| candidate fraction (plain / bg removed) |", "|---|---|---|---|---|"]
        everything: list[Negative] = []
        for group, results in [*self.negatives.items(), ("**all negatives**", None)]:
            results = everything if results is None else results
            if results is not everything:
                everything += results
            plain, removed = np.array([r[0] for r in results]), np.array([r[1] for r in results])
            lines.append(f"| {group} | {len(results)} | {plain.max():.3f} / {removed.max():.3f} | "
                         f"{np.mean(plain >= DEFAULT_THRESHOLD):.2e} / {np.mean(removed >= RESIDUAL_THRESHOLD):.2e} | "
                         f"{_fractions(results)} |")
        return "\n".join(lines)


def _fractions(results: list[Negative]) -> str:
    return " / ".join(f"{np.mean([r[2][v] <= CANDIDATE_MAX_HAMMING for r in results]):.3f}" for v in (0, 1))


def set_background(family: syn.Family, base: BaseModel, count: int) -> None:
    """Benign directions (two per component of the index, two per tensor of the sketches) from a cohort
    of `count` fine-tunes and `count` // 2 LoRAs that appear nowhere else in the run."""
    cohort = [fingerprint_tensors(syn.resave(family.fine_tune(90_000 + j), "fp16"), KEY, [base]) for j in range(count)]
    cohort += [fingerprint_tensors(syn.kohya_layout(family.lora(95_000 + j), "fp16"), KEY) for j in range(count // 2)]
    vectors: dict[str, list[np.ndarray]] = defaultdict(list)
    for fp in cohort:
        for component, vector in index_vectors(fp).items():
            vectors[component].append(vector)
    BACKGROUND.update({c: background_directions(v, 2) for c, v in vectors.items()})
    SKETCH_BACKGROUND.append(Background.from_cohort(cohort))


def dare(delta: syn.Tensors, drop: float, seed: int) -> syn.Tensors:
    """DARE: drop a fraction of delta entries at random and rescale the rest."""
    rng = np.random.default_rng(seed)
    return {n: (d * (rng.random(d.shape) >= drop) / (1 - drop)).astype(np.float32) for n, d in delta.items()}


def run_checkpoints(family: syn.Family, base: BaseModel, matrix: Matrix, listed_count: int, sibling_count: int) -> list[Fingerprint]:
    def fp(tensors: syn.Tensors) -> Fingerprint:
        return fingerprint_tensors(tensors, KEY, [base])

    def infos(tensors: syn.Tensors) -> list[TensorInfo]:
        return [TensorInfo(n, syn.dtype_name(a.dtype), tuple(a.shape)) for n, a in tensors.items()]

    for i in range(listed_count):
        size = family.delta_size(i)
        delta = family.delta(i, size)
        tuned = syn.apply_delta(family.base, delta)
        listed = fp(syn.resave(family.checkpoint(tuned, ema=True), "fp16"))
        other = syn.apply_delta(family.base, family.delta(10_000 + i, size))  # an independent fine-tune, same size
        rows: dict[str, tuple[syn.Tensors, float | None]] = {
            "fp16 re-save": (syn.resave(tuned, "fp16"), None),
            "bf16 re-save": (syn.resave(tuned, "bf16"), None),
            "fp32 re-save": (tuned, None),
            "LDM → diffusers names": (family.diffusers_names(syn.resave(tuned, "fp16")), None),
            "pruned: EMA removed": (syn.resave(family.checkpoint(tuned), "fp16"), None),
            "pruned: text encoder dropped": (syn.drop(syn.resave(tuned, "fp16"), "cond_stage_model."), None),
            "pruned: VAE dropped": (syn.drop(syn.resave(tuned, "fp16"), "first_stage_model."), None),
            "further fine-tune (+50 % of Δ)": (syn.apply_delta(tuned, family.delta(20_000 + i, size), 0.5), None),
            "Gaussian noise, norm = ‖Δ‖": (syn.add_noise(tuned, delta, 1.0, seed=i), None),
            "(extra) DARE, 90 % of Δ dropped": (syn.apply_delta(family.base, dare(delta, 0.9, i)), None),
            "(extra) fp8 e4m3 re-save": ({n: a.astype(ml_dtypes.float8_e4m3fn) for n, a in tuned.items()}, None),
        }
        for alpha in (0.3, 0.5, 0.7):
            rows[f"weighted sum α = {alpha}, fp16"] = (syn.resave(syn.weighted_sum(tuned, other, alpha), "fp16"), alpha)
        m = float(np.random.default_rng(i).uniform(0.5, 1.0))
        rows["add difference other + m·(L − base), m ∈ [0.5, 1]"] = (syn.add_difference(other, tuned, family.base, m), m)
        for row, (query, expected) in rows.items():
            matrix.positive(row, fp(query), listed, expected)
        with tempfile.TemporaryDirectory() as folder:
            resaved = syn.resave(family.checkpoint(tuned), "fp16")
            order = list(np.random.default_rng(i).permutation(sorted(resaved)))
            path = syn.write_safetensors(Path(folder) / "q.safetensors", resaved, {"edited": "yes"}, order=order)
            with open_model(path) as reader:
                matrix.positive("metadata edited + tensor order shuffled (file)", fingerprint_model(reader, KEY, [base]), listed)
            with open_model(syn.write_sharded(Path(folder) / "sharded", resaved, 3)) as reader:
                matrix.positive("sharded into 3 files (reader)", fingerprint_model(reader, KEY, [base]), listed)
        chosen = select_tensors(infos(resaved))
        matrix.positive("partial: select_tensors 5 % budget (crawler)", fp({t.name: resaved[t.name] for t in chosen}), listed)
        print(f"  listed checkpoint {i + 1}/{listed_count}", flush=True)

    siblings = []
    for j in range(sibling_count):
        siblings.append(fp(syn.resave(family.fine_tune(30_000 + j), "fp16")))
    for a, b in itertools.combinations(range(sibling_count), 2):
        matrix.negative("independent fine-tunes of the same base", siblings[a], siblings[b])
    for dtype in ("fp16", "bf16"):
        base_copy = fp(syn.resave(family.base, dtype))
        for listed in siblings[:listed_count]:
            matrix.negative(f"the base itself ({dtype} re-save)", base_copy, listed)
    return siblings


def run_loras(family: syn.Family, base: BaseModel, matrix: Matrix, listed_count: int, sibling_count: int,
              checkpoints: list[Fingerprint]) -> None:
    def lora_fp(tensors: syn.Tensors) -> Fingerprint:
        return fingerprint_tensors(tensors, KEY)

    for i in range(listed_count):
        rng = np.random.default_rng(100 + i)
        lora = family.lora(i, rank=32, size=float(np.exp(rng.uniform(np.log(0.005), np.log(0.05)))))
        listed = lora_fp(syn.kohya_layout(lora, "fp16"))
        for rank in (16, 8, 4):
            matrix.positive(f"LoRA resized by SVD to rank {rank}, fp16", lora_fp(syn.kohya_layout(syn.resize_lora(lora, rank), "fp16")), listed)
        matrix.positive("LoRA kohya → PEFT, fp16", lora_fp(syn.peft_layout(lora, "fp16", prefix="base_model.model.")), listed)
        strength = float(rng.uniform(0.5, 1.0))
        merged = syn.resave(family.merge_lora(family.base, lora, strength), "fp16")
        matrix.positive("LoRA merged into the base, s ∈ [0.5, 1], fp16", fingerprint_tensors(merged, KEY, [base]), listed, strength)
        into = syn.resave(family.merge_lora(family.fine_tune(40_000 + i), lora, strength), "fp16")
        matrix.positive("LoRA merged into another fine-tune, s ∈ [0.5, 1]", fingerprint_tensors(into, KEY, [base]), listed, strength)
        print(f"  listed LoRA {i + 1}/{listed_count}", flush=True)
    loras = [lora_fp(syn.kohya_layout(family.lora(50_000 + j, rank=32), "fp16")) for j in range(sibling_count)]
    for a, b in itertools.combinations(range(sibling_count), 2):
        matrix.negative("a different LoRA on the same modules", loras[a], loras[b])
    for lora in loras:
        for checkpoint in checkpoints:
            matrix.negative("LoRA vs independent fine-tunes", checkpoint, lora)


def run_other_bases(family: syn.Family, base: BaseModel, matrix: Matrix, count: int, listed: list[Fingerprint]) -> None:
    other = syn.Family(family.seed + 1, family.arch)
    for j in range(count):
        tensors = syn.resave(other.base if j == 0 else other.fine_tune(j), "fp16")
        try:
            query = fingerprint_tensors(tensors, KEY, [base], require_base=True)
        except FingerprintError:
            query = None
        for target in listed:
            matrix.negative("another base and its fine-tunes", query, target)


def throughput(scale: int, repeats: int = 3) -> str:
    """Wall-clock GB/s (best of `repeats`, file in page cache) and CPU-seconds per GB, SHA-256 vs fingerprint."""
    family_arch = syn.Architecture(scale=scale, text_layers=12, vocab=49408 // scale)
    rng = np.random.default_rng(0)
    tensors = {s.ldm: (rng.standard_normal(s.shape, dtype=np.float32) * 0.02).astype(np.float16) for s in family_arch.specs}
    with tempfile.TemporaryDirectory() as folder:
        path = syn.write_safetensors(Path(folder) / "model.safetensors", tensors)
        del tensors
        size = path.stat().st_size

        def sha256() -> None:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)

        def fingerprint() -> None:
            with open_model(path) as reader:
                fingerprint_model(reader, KEY)

        timings = {}
        for name, work in (("sha", sha256), ("fp", fingerprint)):
            walls, cpus = [], []
            for _ in range(repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                work()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            timings[name] = (size / min(walls) / 1e9, min(cpus) / size * 1e9)
    (sha_rate, sha_cpu), (fp_rate, fp_cpu) = timings["sha"], timings["fp"]
    return (f"fp16 file of {size / 1e9:.2f} GB in page cache, best of {repeats}: hashlib SHA-256 {sha_rate:.2f} GB/s "
            f"({sha_cpu:.2f} CPU-s/GB), fingerprint {fp_rate:.2f} GB/s ({fp_cpu:.2f} CPU-s/GB on 2 threads), "
            f"wall-clock ratio {fp_rate / sha_rate:.2f}")


def sizes() -> str:
    family = syn.Family(3, syn.Architecture(scale=40, text_layers=12, vocab=100))
    base = fingerprint_tensors(family.checkpoint(family.base), KEY)
    delta = fingerprint_tensors(syn.resave(family.fine_tune(1), "fp16"), KEY, [BaseModel("sd15", base)])
    lora = fingerprint_tensors(syn.kohya_layout(family.lora(1)), KEY)
    return (f"SD 1.5 layout ({len(delta.sketches)} tensors): delta fingerprint {len(delta.to_bytes()):,} bytes, "
            f"raw base fingerprint {len(base.to_bytes()):,} bytes; attention LoRA ({len(lora.sketches)} modules) "
            f"{len(lora.to_bytes()):,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer models (a few minutes)")
    parser.add_argument("--listed", type=int, help="override the number of listed models (smoke runs)")
    parser.add_argument("--throughput-scale", type=int, default=2, help="width divisor of the throughput file (1 = real SD 1.5)")
    parser.add_argument("--throughput-only", action="store_true", help="only the throughput and size measurements")
    args = parser.parse_args()
    if args.throughput_only:
        print(sizes())
        print(throughput(args.throughput_scale))
        return
    listed, siblings, loras, lora_siblings, others = (20, 60, 10, 20, 5) if args.quick else (100, 150, 100, 60, 10)
    if args.listed is not None:
        listed, siblings, loras, lora_siblings, others = args.listed, 3 * args.listed, args.listed, 2 * args.listed, 2
    family = syn.Family(2026, syn.Architecture(scale=20, text_layers=4, vocab=1000))
    base = BaseModel("sd15", fingerprint_tensors(family.checkpoint(family.base), KEY))
    matrix = Matrix()
    started = time.perf_counter()
    set_background(family, base, 20 if args.quick else 40)
    checkpoints = run_checkpoints(family, base, matrix, listed, siblings)
    run_loras(family, base, matrix, loras, lora_siblings, checkpoints)
    run_other_bases(family, base, matrix, others, checkpoints[:listed])
    print(f"\nrobustness matrix (thresholds {DEFAULT_THRESHOLD} plain, {RESIDUAL_THRESHOLD} background removed, "
          f"Hamming cut {CANDIDATE_MAX_HAMMING}/512, {time.perf_counter() - started:.0f} s)\n")
    print(matrix.report())
    print("\n" + sizes())
    print(throughput(args.throughput_scale))


if __name__ == "__main__":
    main()
