"""Build or load any of the three families by registry name, kind or saved config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from diffusion.models.dit import MODEL_SIZES, PATCH_SIZES, DiffusionTransformer, DiT
from diffusion.models.moe_dit import MoEDiT
from diffusion.models.switch_dit import SwitchDiT

MODEL_FAMILIES: dict[str, type[DiffusionTransformer]] = {
    "DiT": DiT,
    "SwitchDiT": SwitchDiT,
    "MoEDiT": MoEDiT,
}
# The lower-case kinds a config file may use for the families.
MODEL_KINDS: dict[str, str] = {"dit": "DiT", "switch-dit": "SwitchDiT", "moe-dit": "MoEDiT"}
MODEL_NAMES: tuple[str, ...] = tuple(
    f"{family}-{size}/{patch}"
    for family in MODEL_FAMILIES
    for size in MODEL_SIZES
    for patch in PATCH_SIZES
)
_NAME = re.compile(r"(?P<family>\w+)-(?P<size>[A-Z]+)/(?P<patch>\d+)")


def build_model(name_or_config: str | dict[str, Any], **overrides: Any) -> DiffusionTransformer:
    """A freshly initialised model.

    ``name_or_config``: a registry name ("DiT-S/2", "MoEDiT-T/4"; see ``MODEL_NAMES``), or a
    dict of constructor arguments plus ``name`` (a registry name whose sizes the arguments
    complete) and/or ``kind``, or a saved config.json (its ``_class_name`` gives the family).
    ``kind`` ("dit", "switch-dit", "moe-dit" or a class name) picks the family whatever the
    name says: ``build_model("DiT-T/4", kind="switch-dit")`` is a Switch-DiT of DiT-T/4's size.
    ``overrides`` (e.g. ``sample_size=28, in_channels=1, num_classes=10``) win over the rest.
    """
    config = {"name": name_or_config} if isinstance(name_or_config, str) else dict(name_or_config)
    config.update(overrides)
    name, kind = config.pop("name", None), config.pop("kind", None)
    family = config.get("_class_name")
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    if name is not None:
        match = _NAME.fullmatch(name)
        if match is None or match["size"] not in MODEL_SIZES:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
        family = match["family"]
        config = {**MODEL_SIZES[match["size"]], "patch_size": int(match["patch"]), **config}
    if kind is not None:
        family = MODEL_KINDS.get(kind, kind)
    if family not in MODEL_FAMILIES:
        known = ", ".join([*MODEL_FAMILIES, *MODEL_KINDS])
        raise ValueError(f"unknown model family {family!r}; known: {known}")
    return MODEL_FAMILIES[family](**config)


def load_pretrained(folder: str | Path, **kwargs: Any) -> DiffusionTransformer:
    """A model saved with ``save_pretrained``, of the family its config.json names."""
    config = json.loads((Path(folder) / "config.json").read_text())
    family = config.get("_class_name")
    if family not in MODEL_FAMILIES:
        raise ValueError(
            f"{folder}/config.json names {family!r}, not one of {list(MODEL_FAMILIES)}"
        )
    return MODEL_FAMILIES[family].from_pretrained(folder, **kwargs)
