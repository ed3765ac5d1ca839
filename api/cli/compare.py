"""`modelsieve compare`: how much of model B's fine-tune is inside model A."""

from __future__ import annotations

import argparse
from typing import Any

from modelsieve.api.cli.background import cohorts_for
from modelsieve.api.cli.common import add_db_option, add_json_flag, command_parser, print_json_line, printable
from modelsieve.api.cli.fuzzy_inputs import add_base_options, add_key_option, bases_for, fingerprint_key, load_fingerprint
from modelsieve.fingerprint.calibration import CalibratedScore, Policy, assess
from modelsieve.fingerprint.fuzzy import DEFAULT_THRESHOLD, Comparison

EXAMPLES = """\
examples:
  modelsieve compare merged.safetensors listed.safetensors
  modelsieve compare query.safetensors listed.msfp --json
  modelsieve compare lora.safetensors checkpoint.safetensors --base v1-5-pruned.safetensors

A and B are model files or saved fingerprints. The similarity is the cosine of the two deltas
(from their common base; LoRAs are deltas already) over the tensors both hold; the coefficient is
how much of B's delta A carries (merge weight, LoRA strength, add-difference multiplier).
Scores are uncalibrated raw cosines until the base has a background cohort in the store
(`modelsieve bases add-background`); then the comparison also gives the cohort-normalised score,
the estimated false-match rate and a decision (review | action), and the verdict follows it.
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "compare",
        "compare two models' fuzzy fingerprints",
        "Compare the fine-tune delta of model A (the query) with that of model B (e.g. a listed\n"
        "model): similarity, score, B's coefficient inside A, and which components and blocks\n"
        "carry the similarity.",
        EXAMPLES,
    )
    parser.add_argument("query", metavar="A", help="model file or saved fingerprint (the query)")
    parser.add_argument("listed", metavar="B", help="model file or saved fingerprint (e.g. the listed model)")
    parser.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD,
                        help=f"score from which the pair is reported as a near match (default {DEFAULT_THRESHOLD})")
    add_base_options(parser)
    add_key_option(parser)
    add_db_option(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def describe(a: str, b: str, result: Comparison, calibration: CalibratedScore, decision: str | None) -> str:
    verdict = f"near match ({decision})" if decision else "no match"
    lines = [
        f"{a} vs {b}: {verdict}",
        f"  similarity {result.similarity:.3f}, score {result.score:.3f}"
        f"{'' if result.calibrated else ' (uncalibrated)'}, coefficient {result.coefficient:.2f}",
        f"  base {result.base or '-'}, {result.tensors_compared} tensors compared, "
        f"covering {result.coverage:.0%} of B's delta",
    ]
    if calibration.calibrated:
        lines.append(f"  normalised {calibration.normalised:.1f} against {calibration.cohort_size} background models, "
                     f"false match {calibration.false_match_text}")
    for name, group in result.components.items():
        lines.append(f"  {name:<14} similarity {group.similarity:6.3f}  share {group.share:6.1%}  ({group.tensors} tensors)")
    top = sorted(result.blocks.items(), key=lambda item: -abs(item[1].share))[:5]
    lines += [f"  block {printable(name):<26} similarity {g.similarity:6.3f}  share {g.share:6.1%}" for name, g in top]  # parts of tensor names
    return "\n".join(lines)


def _threshold(text: str) -> float:
    """An argparse type: a similarity threshold in (0, 1] (NaN or 2 would make every pair "no match")."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a similarity threshold is above 0 and at most 1, not {text}")
    return value


def run(args: argparse.Namespace) -> int:
    key = fingerprint_key(args)
    bases = bases_for(args, key)
    query, listed = load_fingerprint(args.query, key, bases), load_fingerprint(args.listed, key, bases)
    result, calibration = assess(query, listed, cohorts_for(args, key))
    decision = calibration.decision(Policy(uncalibrated_review=args.threshold)) if result.tensors_compared else None
    if args.json:
        print_json_line({"a": args.query, "b": args.listed, "match": decision is not None, "decision": decision,
                         "threshold": args.threshold, **result.to_json(), "calibration": calibration.to_json()})
    else:
        print(describe(args.query, args.listed, result, calibration, decision))
    return 0
