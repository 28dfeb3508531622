"""What every diffusion transformer here returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput


@dataclass
class DiffusionTransformerOutput(BaseOutput):
    """Output of ``DiT``, ``SwitchDiT`` and ``MoEDiT``.

    Args:
        sample: (B, out_channels, H, W) prediction; out_channels is 2 * in_channels with a
            learned sigma (noise prediction first, then the variance interpolation).
        aux_loss: scalar, already weighted: the diffusion prior loss (SwitchDiT, training mode
            only), the load-balancing loss (MoEDiT), zero for DiT. Add it to the diffusion loss.
        expert_load: (depth, num_experts) share of the routing decisions each expert received in
            each block (rows sum to 1), detached; None for DiT.
        dropped_tokens: (depth,) token-to-expert assignments dropped for exceeding an expert's
            capacity in each block (MoEDiT only; None otherwise), detached.
    """

    sample: torch.Tensor
    aux_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None
    dropped_tokens: torch.Tensor | None = None
