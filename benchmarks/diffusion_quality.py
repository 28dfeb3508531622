"""DiT vs Switch-DiT vs token-MoE DiT on Fashion-MNIST: sample quality at fixed steps.

    python benchmarks/diffusion_quality.py [--steps 1500] [--write]

Trains the three families from configs/diffusion/dit-fmnist.yaml with the same
width, depth, data, batches (same seed), optimiser and step count, and scores
EMA samples at fixed step checkpoints with our own classifier's features (FID,
KID, conditional accuracy; see diffusion/evaluation). The floor row scores as
many real test images against the same training-set reference: no model can
beat it. The checkpoints are fixed in advance and every one is reported: no
step or seed is picked on the results. With --write the table and the final
sample grids go into docs/benchmarks.md and docs/images/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recsys_quality import _git, machine, source_commit, write_section  # noqa: E402

BEGIN, END = "<!-- diffusion-quality:begin -->", "<!-- diffusion-quality:end -->"
KINDS = ("dit", "switch-dit", "moe-dit")


def dirty_note() -> str:
    dirty = _git("status", "--porcelain", "--", "diffusion", "configs/diffusion")
    return " (with uncommitted changes)" if dirty else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500, help="generated images per evaluation")
    parser.add_argument("--output-root", type=Path, default=ROOT / "runs" / "diffusion-quality")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    from diffusion.config import DiffusionExperiment
    from diffusion.train import run
    from recsys.config import load_config

    at_steps = list(range(args.eval_every, args.steps + 1, args.eval_every))
    results, walls = {}, {}
    for kind in KINDS:
        overrides = [
            f"name={kind}",
            f"output_root={args.output_root}",
            f"model.kind={kind}",
            f"train.steps={args.steps}",
            f"train.sample_every={args.steps}",
            f"eval.at_steps={at_steps}",
            f"eval.num_samples={args.samples}",
            "sample.steps=25",
            *args.extra,
        ]
        config = load_config(
            DiffusionExperiment, ROOT / "configs/diffusion/dit-fmnist.yaml", overrides
        )
        started = time.perf_counter()
        results[kind] = run(config)
        walls[kind] = time.perf_counter() - started

    floor = results[KINDS[0]]["floor"]
    lines = [
        "| model | step | FID | KID | accuracy | wall (s, whole run) |",
        "|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for entry in results[kind]["history"]:
            if "eval/fid" in entry:
                lines.append(
                    f"| {kind} | {entry['step']} | {entry['eval/fid']:.2f} | "
                    f"{entry['eval/kid']:.3f} | {entry['eval/accuracy']:.3f} | {walls[kind]:.0f} |"
                )
    lines.append(
        f"| floor: {args.samples} real test images | - | {floor['floor/fid']:.2f} | "
        f"{floor['floor/kid']:.3f} | {floor['floor/accuracy']:.3f} | - |"
    )
    images = ROOT / "docs" / "images"
    grids = []
    for kind in KINDS:
        grid = args.output_root / kind / f"samples-step{args.steps:06d}.png"
        if grid.exists() and args.write:
            images.mkdir(parents=True, exist_ok=True)
            shutil.copy(grid, images / f"diffusion-{kind}.png")
            grids.append(f"![{kind} samples at step {args.steps}](images/diffusion-{kind}.png)")
    config_text = " ".join(args.extra) or "defaults"
    body = "\n".join(
        [
            f"`python benchmarks/diffusion_quality.py --steps {args.steps} --samples {args.samples}` "
            f"on {dt.date.today().isoformat()}, commit {source_commit()}{dirty_note()}, {machine()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; overrides: {config_text}.",
            "",
            *lines,
            "",
            "EMA samples, DDIM 25 steps, guidance 2.0, one row per class (0 T-shirt ... 9 ankle boot):",
            "",
            *grids,
        ]
    )
    print(body)
    (args.output_root / "summary.json").write_text(json.dumps({"walls": walls, "floor": floor}))
    if args.write:
        write_section(ROOT / "docs" / "benchmarks.md", body, BEGIN, END)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
