"""Diffusion transformers as diffusers models: DiT, Switch-DiT and a token-routed MoE-DiT.

All three take ``(x, timestep, class_labels)`` and return a ``DiffusionTransformerOutput``
(``sample``, ``aux_loss``, ``expert_load``, ``dropped_tokens``); ``build_model`` makes one
from a registry name such as "DiT-S/2" or "SwitchDiT-T/4", ``load_pretrained`` reads one
back from a ``save_pretrained`` folder whatever its family.
"""

from diffusion.models.dit import MODEL_SIZES, PATCH_SIZES, DiffusionTransformer, DiT
from diffusion.models.factory import (
    MODEL_FAMILIES,
    MODEL_KINDS,
    MODEL_NAMES,
    build_model,
    load_pretrained,
)
from diffusion.models.moe_dit import MoEDiT
from diffusion.models.outputs import DiffusionTransformerOutput
from diffusion.models.switch_dit import SwitchDiT

__all__ = [
    "MODEL_FAMILIES",
    "MODEL_KINDS",
    "MODEL_NAMES",
    "MODEL_SIZES",
    "PATCH_SIZES",
    "DiT",
    "DiffusionTransformer",
    "DiffusionTransformerOutput",
    "MoEDiT",
    "SwitchDiT",
    "build_model",
    "load_pretrained",
]
