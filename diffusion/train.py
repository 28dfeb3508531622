"""Train a class-conditional diffusion transformer (DiT, Switch-DiT, token-MoE DiT).

    python -m diffusion.train configs/diffusion/dit-fmnist.yaml [key=value ...]
    python -m diffusion.train configs/diffusion/dit-fmnist.yaml model.kind=switch-dit train.steps=4000

One process, no Ray, no MLflow (``pipelines.diffusion`` adds those around the
same loop). diffusers' DDPM noise schedule (linear or cosine), epsilon or v
prediction, AdamW, gradient clipping, an EMA copy of the weights (sampling and
evaluation use it), bf16 autocast on CUDA. Every ``checkpoint_every`` steps the
whole state (weights, EMA, optimiser, step) is saved atomically; a rerun with
the same config resumes from it. Every ``sample_every`` steps a grid of EMA
samples (``per_class`` per class, rows = classes) is written as PNG. Batches
are drawn with a generator seeded by (seed, step), so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from recsys.config import ConfigError, load_config, to_dict

from .config import DiffusionExperiment
from .data import DataError
from .images import save_grid
from .pipeline import ClassConditionalPipeline, make_scheduler

CHECKPOINT = "checkpoint.pt"


# ----------------------------------------------------------------------------- parts


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_images(config: DiffusionExperiment) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training images in [-1, 1], (N, 1, S, S); labels (N,); number of classes."""
    from .data import load_fashion_mnist, synthetic_images, to_model_range

    data = config.data
    if data.dataset == "synthetic":
        images, labels = synthetic_images(
            data.synthetic_count, 10, data.synthetic_size, seed=config.seed
        )
    else:
        source = data.source
        if source is None and os.environ.get("GENREC_DATA_DIR"):
            source = str(Path(os.environ["GENREC_DATA_DIR"]) / "fashion-mnist")
        images, labels = load_fashion_mnist(source, "train")
    if data.limit is not None:
        images, labels = images[: data.limit], labels[: data.limit]
    return to_model_range(images, pad_to=data.pad_to), labels.long(), 10


def build_model(config: DiffusionExperiment, sample_size: int, num_classes: int):
    from .models import build_model as build

    options = {"learn_sigma": False, **config.model.options}
    if options["learn_sigma"]:
        # A learned variance needs DiT's hybrid loss (the VLB term); the MSE here trains only
        # the mean, so the extra channels would stay untrained noise.
        raise ConfigError(
            "model.options.learn_sigma: true is not supported by this trainer (no VLB loss); "
            "remove it to train the mean only, as with a fixed variance"
        )
    return build(
        config.model.size,
        kind=config.model.kind,
        sample_size=sample_size,
        in_channels=1,
        num_classes=num_classes,
        **options,
    )


def noise_scheduler(config: DiffusionExperiment) -> DDPMScheduler:
    process = config.process
    return DDPMScheduler(
        num_train_timesteps=process.num_train_timesteps,
        beta_schedule=process.beta_schedule,
        prediction_type=process.prediction_type,
        clip_sample=False,  # pixel targets are in [-1, 1] already; clipping biases v-prediction
    )


def diffusion_loss(model, scheduler, images, labels, generator) -> tuple[torch.Tensor, object]:
    """MSE on the predicted noise (or velocity) at uniform random timesteps, plus the MoE loss."""
    batch = images.shape[0]
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator
    ).to(images.device)
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    noisy = scheduler.add_noise(images, noise, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(images, noise, timesteps)
    out = model(noisy, timesteps, labels)
    prediction = out.sample[:, : images.shape[1]]
    loss = F.mse_loss(prediction.float(), target.float())
    return loss + out.aux_loss.float(), out


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """EMA with warm-up: decay min(decay, (1 + step) / (10 + step)).

    Without the warm-up a short run's EMA is still mostly the random initialisation
    (0.999 forgets it only after a few thousand steps)."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1 - decay)


def expert_metrics(expert_load) -> dict[str, float]:
    """Routing fraction per expert (averaged over blocks) and max/mean imbalance."""
    if expert_load is None:
        return {}
    per_expert = expert_load.float().mean(0)
    metrics = {f"experts/load_e{i}": float(v) for i, v in enumerate(per_expert)}
    metrics["experts/imbalance"] = float(per_expert.max() / per_expert.mean().clamp(min=1e-12))
    return metrics


def sample(model, config: DiffusionExperiment, labels, seed: int, progress: bool = False):
    """Images in [0, 1], (N, C, H, W), from the given model with the configured sampler.

    Large requests go in chunks of 256 (each seeded from ``seed`` and its index), so
    memory stays flat and the same (labels, seed) always gives the same images."""
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() > 256:
        chunks = labels.split(256)
        return torch.cat(
            [
                sample(model, config, chunk, seed * 7919 + i, progress)
                for i, chunk in enumerate(chunks)
            ]
        )
    pipe = ClassConditionalPipeline(
        transformer=model,
        scheduler=make_scheduler(config.sample.scheduler, noise_scheduler(config).config),
    )
    pipe.set_progress_bar_config(disable=not progress)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return pipe(
            labels,
            num_inference_steps=config.sample.steps,
            guidance_scale=config.sample.guidance_scale,
            generator=generator,
            output_type="pt",
            progress=progress,
        ).images
    finally:
        model.train(was_training)


def make_evaluator(config: DiffusionExperiment):
    """evaluate(ema, step) -> FID / KID / accuracy of EMA samples, or None without a classifier.

    Features come from our own Fashion-MNIST classifier (``eval.classifier``, trained by
    ``python -m diffusion.evaluation.train_classifier``); the reference is the real training
    split, and ``floor`` holds the same metrics for as many real test images."""
    if not config.eval.classifier:
        return None, {}
    from .data import load_fashion_mnist
    from .evaluation import evaluate_samples, floor, load_classifier, reference_statistics

    folder = Path(config.eval.classifier)
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(
            f"{folder} holds no classifier: train it with `python -m "
            f"diffusion.evaluation.train_classifier --out {folder}`, or set eval.classifier=null"
        )
    classifier = load_classifier(folder)
    source = config.data.source
    if source is None and os.environ.get("GENREC_DATA_DIR"):
        source = str(Path(os.environ["GENREC_DATA_DIR"]) / "fashion-mnist")
    train_images, _ = load_fashion_mnist(source, "train")
    reference = reference_statistics(classifier, train_images, "fashion-mnist-train", folder)
    count = config.eval.num_samples
    subset = min(1000, count)
    test_images, test_labels = load_fashion_mnist(source, "test")
    real = floor(classifier, reference, test_images, test_labels, count, kid_subset_size=subset)
    floor_metrics = {f"floor/{k}": real[k] for k in ("fid", "kid", "accuracy")}
    labels = torch.arange(10).repeat_interleave(math.ceil(count / 10))[:count]

    def evaluate(ema, step: int) -> dict:
        images = sample(ema, config, labels, seed=config.seed + 1) * 2 - 1
        scores = evaluate_samples(images, labels, reference, classifier, kid_subset_size=subset)
        return {f"eval/{k}": scores[k] for k in ("fid", "kid", "kid_std", "accuracy")}

    return evaluate, floor_metrics


# ----------------------------------------------------------------------------- loop


@dataclass
class Hooks:
    """What a caller (the CLI, a Ray Train worker with MLflow) does with progress."""

    log: object = None  # log(metrics: dict, step: int); rank 0 only
    artifact: object = None  # artifact(path: Path, folder: str); rank 0 only
    evaluate: object = None  # evaluate(ema_model, step) -> dict of metrics; rank 0 only
    # Data-parallel training: wrap the model (e.g. ray.train.torch.prepare_model -> DDP).
    prepare_model: object = None
    # checkpointed(folder or None, step, metrics): every rank, after each checkpoint.
    checkpointed: object = None
    rank: int = 0
    world_size: int = 1


def resume_key(config: DiffusionExperiment) -> dict:
    """What must match for a checkpoint to be resumed: data, model, process and optimiser.

    Step counts, sampling and evaluation settings may change (e.g. train longer)."""
    data = to_dict(config)
    train = data["train"]
    return {
        "seed": data["seed"],
        "data": data["data"],
        "model": data["model"],
        "process": data["process"],
        "train": {
            key: train[key]
            for key in ("batch_size", "learning_rate", "weight_decay", "grad_clip", "ema_decay")
        },
    }


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save leaves the previous checkpoint intact


def fit(config: DiffusionExperiment, run_dir: Path, hooks: Hooks | None = None) -> dict:
    """Train (resuming from ``run_dir/checkpoint.pt`` if present); returns the results."""
    hooks = hooks or Hooks()
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = resolve_device(config.train.device)
    images, labels, num_classes = load_images(config)
    model = build_model(config, images.shape[-1], num_classes).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    plain = model  # the unwrapped module: what checkpoints and the EMA hold
    scheduler = noise_scheduler(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay
    )
    train = config.train
    start, history = 0, []
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["resume_key"] != resume_key(config):
            raise ConfigError(
                f"{checkpoint} was written with other data, model, process or optimiser "
                "settings; use another name= or delete the folder to start over"
            )
        plain.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        print(f"[resume] from step {start} ({checkpoint})", flush=True)
    if hooks.prepare_model:
        model = hooks.prepare_model(model)
    lead = hooks.rank == 0  # one rank writes files and logs; all of them train

    autocast = device.type == "cuda" and train.bf16
    sample_labels = torch.arange(num_classes).repeat_interleave(config.sample.per_class)
    progress = tqdm(
        range(start, train.steps), initial=start, total=train.steps, desc="train", disable=not lead
    )
    started, window = time.perf_counter(), []
    model.train()
    for step in progress:
        # Each rank draws its own batch; one process draws exactly what it always did.
        step_seed = (config.seed * 1_000_003 + step) * hooks.world_size + hooks.rank
        generator = torch.Generator().manual_seed(step_seed)
        # Label dropout draws from the global generator: seed it per step too, so a resumed
        # run drops the same labels as an uninterrupted one.
        torch.manual_seed(step_seed)
        index = torch.randint(0, images.shape[0], (train.batch_size,), generator=generator)
        batch, batch_labels = images[index].to(device), labels[index].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, out = diffusion_loss(model, scheduler, batch, batch_labels, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step}: lower train.learning_rate or keep "
                "train.grad_clip on; the last checkpoint is intact"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        update_ema(ema, plain, train.ema_decay, step)
        window.append(loss.item())
        done = step + 1
        if done % train.log_every == 0 or done == train.steps:
            metrics = {
                "train/loss": float(np.mean(window)),
                "train/grad_norm": float(grad_norm),
                "train/aux_loss": float(out.aux_loss),
                "train/images_per_s": train.batch_size
                * len(window)
                / max(time.perf_counter() - started, 1e-9),
                **expert_metrics(getattr(out, "expert_load", None)),
            }
            history.append({"step": done, **metrics})
            progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
            if hooks.log and lead:
                hooks.log(metrics, done)
            started, window = time.perf_counter(), []
        if lead and (done % train.sample_every == 0 or done == train.steps):
            grid = sample(ema, config, sample_labels, seed=config.seed)
            path = save_grid(grid, num_classes, run_dir / f"samples-step{done:06d}.png")
            if hooks.artifact:
                hooks.artifact(path, "samples")
        evaluating = done in config.eval.at_steps or done == train.steps
        if lead and hooks.evaluate and evaluating:
            scores = hooks.evaluate(ema, done)
            history.append({"step": done, **scores})
            if hooks.log:
                hooks.log(scores, done)
        if done % train.checkpoint_every == 0 or done == train.steps:
            if lead:
                _save_checkpoint(
                    checkpoint,
                    {
                        "resume_key": resume_key(config),
                        "model": plain.state_dict(),
                        "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "step": done,
                        "history": history,
                    },
                )
            if hooks.checkpointed:
                hooks.checkpointed(run_dir if lead else None, done, history[-1] if history else {})
    results = {"steps": train.steps, "history": history, "model": str(run_dir / "ema")}
    if lead:
        ema.save_pretrained(run_dir / "ema")  # diffusers layout: config.json + safetensors
        (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    return results


def run(config: DiffusionExperiment) -> dict:
    import yaml

    run_dir = Path(config.output_root) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    evaluate, floor_metrics = make_evaluator(config)
    results = fit(config, run_dir, Hooks(evaluate=evaluate))
    if floor_metrics:
        results["floor"] = floor_metrics
        (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    last = next((h for h in reversed(results["history"]) if "train/loss" in h), {})
    print(f"[done] {run_dir}: final loss {last.get('train/loss', float('nan')):.4f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m diffusion.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", help="YAML, e.g. configs/diffusion/dit-fmnist.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="key=value, e.g. train.steps=100 model.kind=switch-dit"
    )
    args = parser.parse_args(argv)
    try:
        run(load_config(DiffusionExperiment, args.config, args.overrides))
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
