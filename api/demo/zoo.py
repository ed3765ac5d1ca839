"""A small synthetic model zoo: a base, listed stand-ins for harmful models, near-copies, benign models.

Every weight is random (benign by construction); "listed" only means the demo puts it on a list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsieve.fingerprint import synthetic

FAMILY_SEED = 15


@dataclass(frozen=True)
class ZooModel:
    """One file of the zoo: its name, what it is, and whether the demo lists it."""

    filename: str
    role: str  # "base" | "listed" | "near-copy" | "exact-copy" | "benign"
    description: str

    @property
    def listed(self) -> bool:
        return self.role == "listed"


def build_zoo(folder: Path) -> tuple[ZooModel, list[ZooModel]]:
    """Write the zoo into `folder`; returns (the base, every other model)."""
    family = synthetic.Family(FAMILY_SEED)
    listed_checkpoint = family.fine_tune(1, size=0.01)
    listed_lora = family.lora(2, rank=32)
    benign_checkpoint = family.fine_tune(3, size=0.01)
    files: dict[ZooModel, synthetic.Tensors] = {
        ZooModel("listed-checkpoint.safetensors", "listed", "fine-tune the demo lists"): family.checkpoint(listed_checkpoint),
        ZooModel("listed-lora.safetensors", "listed", "kohya LoRA the demo lists"): synthetic.kohya_layout(listed_lora),
        ZooModel("copy-fp16.safetensors", "near-copy", "listed fine-tune re-saved in fp16"): synthetic.resave(
            family.checkpoint(listed_checkpoint), "fp16"
        ),
        ZooModel("merge-50-50.safetensors", "near-copy", "0.5·listed + 0.5·benign fine-tune"): synthetic.weighted_sum(
            listed_checkpoint, benign_checkpoint, 0.5
        ),
        ZooModel("lora-rank8-peft.safetensors", "near-copy", "listed LoRA resized to rank 8, PEFT keys, fp16"): (
            synthetic.peft_layout(synthetic.resize_lora(listed_lora, 8), "fp16", prefix="base_model.model.")
        ),
        ZooModel("lora-baked.safetensors", "near-copy", "listed LoRA merged into the base at 0.8"): family.merge_lora(
            family.base, listed_lora, 0.8
        ),
        ZooModel("benign-checkpoint.safetensors", "benign", "independent fine-tune of the same base"): benign_checkpoint,
        ZooModel("benign-lora.safetensors", "benign", "independent LoRA on the same modules"): synthetic.kohya_layout(
            family.lora(4, rank=32)
        ),
    }
    base = ZooModel("base.safetensors", "base", "the public base (registered, never listed)")
    synthetic.write_safetensors(folder / base.filename, family.checkpoint(family.base))
    for model, tensors in files.items():
        synthetic.write_safetensors(folder / model.filename, tensors)
    exact = ZooModel("reupload.safetensors", "exact-copy", "byte-identical re-upload of the listed fine-tune")
    (folder / exact.filename).write_bytes((folder / "listed-checkpoint.safetensors").read_bytes())
    return base, [*files, exact]
