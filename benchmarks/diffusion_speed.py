"""Diffusion transformer training speed: our DiT vs diffusers' DiT, and MoE overhead vs dense.

    python benchmarks/diffusion_speed.py [--rounds 5] [--steps 2] [--threads 1] [--write]

One training step = forward, MSE on the noise channels (+ the model's aux loss), backward,
AdamW step; fp32 on the CPU, batch 32, random data (speed does not depend on it).

1. Our ``DiT`` against diffusers' ``DiTTransformer2DModel`` built to the same size (hidden,
   depth, heads, patch, sample size, channels, learned sigma, num_embeds_ada_norm =
   num_classes), on 28x28x1 (Fashion-MNIST) and 32x32x4 (the latent shape diffusers' DiT
   pipelines use). Tiny widths: diffusers' DiT-S/2 at 32x32 takes 10-15 s a step on 2 cores.
2. The cost of the experts at equal active parameters: ``SwitchDiT`` (3 experts, top-1 or
   top-2, its MLP narrowed by the active experts' k*D^2 parameters) and ``MoEDiT`` (8 experts
   plus a shared one, top-1 or top-2, experts sized so a token uses DiT's MLP width) against
   ``DiT``. Switch-DiT's step includes its prior loss (gates at all 1000 timesteps and the
   Hungarian matching).

Models of one table run side by side in interleaved rounds (order reversed every round) so a
noisy machine slows all alike; the table gives the median over rounds of the per-step time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recsys_quality import _git, machine, source_commit, write_section  # noqa: E402

BEGIN, END = "<!-- diffusion-speed:begin -->", "<!-- diffusion-speed:end -->"
BATCH = 32


def dirty_note() -> str:
    """Like recsys_quality.dirty_note, for the files these numbers depend on."""
    if os.environ.get("GENREC_SOURCE_COMMIT"):
        return ""
    dirty = _git("status", "--porcelain", "--", "diffusion/models", "benchmarks/diffusion_speed.py")
    return " (with uncommitted changes)" if dirty else ""


def diffusers_dit(model):
    """diffusers' DiTTransformer2DModel with the sizes of one of our DiTs."""
    from diffusers import DiTTransformer2DModel

    config = model.config
    return DiTTransformer2DModel(
        num_attention_heads=config.num_heads,
        attention_head_dim=config.hidden_size // config.num_heads,
        in_channels=config.in_channels,
        out_channels=model.out_channels,
        num_layers=config.depth,
        sample_size=config.sample_size,
        patch_size=config.patch_size,
        num_embeds_ada_norm=config.num_classes,
        norm_num_groups=1,  # unused by the adaLN-Zero blocks; must divide in_channels
    )


class Trainer:
    """One model, its optimiser and a fixed random batch; ``step()`` times one training step."""

    def __init__(self, model, sample_size: int, channels: int, num_classes: int, seed: int = 0):
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        shape = (BATCH, channels, sample_size, sample_size)
        self.x = torch.randn(shape, generator=generator)
        self.noise = torch.randn(shape, generator=generator)
        self.t = torch.randint(0, 1000, (BATCH,), generator=generator)
        self.y = torch.randint(0, num_classes, (BATCH,), generator=generator)
        self.channels = channels
        self.seconds: list[float] = []

    def step(self) -> None:
        import torch.nn.functional as F

        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(self.x + self.noise, self.t, self.y)
        loss = F.mse_loss(out.sample[:, : self.channels], self.noise)
        if getattr(out, "aux_loss", None) is not None:
            loss = loss + out.aux_loss
        loss.backward()
        self.optimizer.step()
        self.seconds.append(time.perf_counter() - started)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1e3


def race(trainers: dict[str, Trainer], rounds: int, steps: int) -> None:
    """Warm each up, then ``rounds`` rounds of ``steps`` steps each, order reversed each round."""
    for trainer in trainers.values():
        trainer.step()
        trainer.seconds.clear()
    order = list(trainers)
    for round_index in range(rounds):
        for name in order if round_index % 2 == 0 else order[::-1]:
            for _ in range(steps):
                trainers[name].step()
        print(
            f"[bench] round {round_index + 1}/{rounds}: "
            + ", ".join(f"{n} {t.median_ms:.0f} ms" for n, t in trainers.items()),
            flush=True,
        )


def parse_setting(text: str) -> tuple[int, int, str]:
    """'28x1:T/4' -> (28, 1, 'T/4')."""
    shape, size = text.split(":")
    sample_size, channels = shape.split("x")
    return int(sample_size), int(channels), size


def compare_with_diffusers(settings: list[str], rounds: int, steps: int) -> list[str]:
    import torch

    from diffusion.models import build_model

    rows = []
    for setting in settings:
        sample_size, channels, size = parse_setting(setting)
        num_classes = 10 if channels == 1 else 1000
        torch.manual_seed(0)
        ours = build_model(
            f"DiT-{size}", sample_size=sample_size, in_channels=channels, num_classes=num_classes
        )
        reference = diffusers_dit(ours)
        trainers = {
            "ours": Trainer(ours, sample_size, channels, num_classes),
            "diffusers": Trainer(reference, sample_size, channels, num_classes),
        }
        race(trainers, rounds, steps)
        a, b = trainers["ours"].median_ms, trainers["diffusers"].median_ms
        c = ours.config
        rows.append(
            f"| {sample_size}x{sample_size}x{channels} | DiT-{size} (d={c.hidden_size}, "
            f"depth {c.depth}, {c.num_heads} heads, {(sample_size // c.patch_size) ** 2} tokens) "
            f"| {ours.num_parameters() / 1e6:.2f}M / {reference.num_parameters() / 1e6:.2f}M "
            f"| {a:.0f} | {b:.0f} | {BATCH / a * 1e3:.0f} | {BATCH / b * 1e3:.0f} | {b / a:.2f}x |"
        )
        print(rows[-1], flush=True)
    return [
        "| input | size | params (ours / diffusers) | ours ms/step | diffusers ms/step "
        "| ours img/s | diffusers img/s | ours speed / diffusers |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def moe_overhead(setting: str, rounds: int, steps: int) -> list[str]:
    import torch

    from diffusion.models import build_model

    sample_size, channels, size = parse_setting(setting)
    common = dict(sample_size=sample_size, in_channels=channels, num_classes=10)
    # Equal active parameters: DiT's MLP has 2 * 4 * D^2; Switch-DiT adds k * D^2 active
    # expert parameters, so its MLP ratio drops by k / 2; MoE-DiT's default expert width
    # already gives a token DiT's MLP width (shared + top-k experts).
    variants = {
        "DiT": ("DiT", {}),
        "SwitchDiT top-1 of 3": ("SwitchDiT", dict(num_experts=3, top_k=1, mlp_ratio=3.5)),
        "SwitchDiT top-2 of 3": ("SwitchDiT", dict(num_experts=3, top_k=2, mlp_ratio=3.0)),
        "MoEDiT top-1 of 8 + shared": ("MoEDiT", dict(num_experts=8, top_k=1)),
        "MoEDiT top-2 of 8 + shared": ("MoEDiT", dict(num_experts=8, top_k=2)),
    }
    models, trainers = {}, {}
    for label, (family, options) in variants.items():
        torch.manual_seed(0)
        models[label] = build_model(f"{family}-{size}", **common, **options)
        trainers[label] = Trainer(models[label], sample_size, channels, 10)
    race(trainers, rounds, steps)
    dense = trainers["DiT"].median_ms
    lines = [
        "| model | total params | active params | ms/step | img/s | step time vs DiT |",
        "|---|---|---|---|---|---|",
    ]
    for label, trainer in trainers.items():
        model, ms = models[label], trainer.median_ms
        lines.append(
            f"| {label} | {model.num_parameters() / 1e6:.2f}M "
            f"| {model.num_parameters(active_only=True) / 1e6:.2f}M | {ms:.0f} "
            f"| {BATCH / ms * 1e3:.0f} | {ms / dense:.2f}x |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per model per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compare",
        nargs="+",
        default=["28x1:T/4", "32x4:T/4", "32x4:T/2"],
        help="SIZExCHANNELS:SIZE/PATCH settings for the diffusers comparison",
    )
    parser.add_argument("--moe", default="28x1:T/4", help="setting of the MoE-overhead table")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    versus = compare_with_diffusers(args.compare, args.rounds, args.steps)
    overhead = moe_overhead(args.moe, args.rounds, args.steps)
    import diffusers

    body = "\n".join(
        [
            f"`python benchmarks/diffusion_speed.py --rounds {args.rounds} --steps {args.steps} "
            f"--threads {args.threads}` on {dt.date.today().isoformat()}, commit "
            f"{source_commit()}{dirty_note()}, {machine()}, diffusers {diffusers.__version__}, "
            f"{args.threads} thread(s). Training step (forward, MSE + aux loss, backward, AdamW), "
            f"fp32, batch {BATCH}, median over {args.rounds} interleaved rounds of {args.steps} "
            f"steps; {time.perf_counter() - started:.0f} s in all.",
            "",
            "Our DiT vs diffusers' DiTTransformer2DModel of the same size:",
            "",
            *versus,
            "",
            f"Mixture-of-experts overhead at equal active parameters ({args.moe}, DiT-"
            f"{parse_setting(args.moe)[2]} sizes):",
            "",
            *overhead,
        ]
    )
    print(body)
    if args.write:
        write_section(ROOT / "docs" / "benchmarks.md", body, BEGIN, END)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
