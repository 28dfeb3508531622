"""diffusion.train and the sampling pipeline on a tiny model and generated shapes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffusion.config import DiffusionExperiment
from diffusion.models import load_pretrained
from diffusion.pipeline import SCHEDULERS, ClassConditionalPipeline, make_scheduler
from diffusion.train import fit, noise_scheduler, run
from recsys.config import ConfigError, load_config

TINY = [
    "data.synthetic_count=64",
    "model.options={hidden_size: 32, depth: 2, num_heads: 2}",
    "train.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "train.sample_every=1000",
    "sample.steps=2",
    "sample.per_class=1",
]


def tiny_config(tmp_path, *extra: str) -> DiffusionExperiment:
    overrides = [*TINY, f"output_root={tmp_path}", *extra]
    return load_config(DiffusionExperiment, "configs/diffusion/demo.yaml", overrides)


def test_a_run_leaves_weights_grids_and_metrics(tmp_path):
    config = tiny_config(tmp_path, "train.steps=4", "name=plain")
    results = run(config)
    folder = tmp_path / "plain"
    assert (folder / "samples-step000004.png").exists()
    grid = Image.open(folder / "samples-step000004.png")
    assert grid.size[1] > grid.size[0]  # one row per class, one image per row
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in results["history"])
    model = load_pretrained(folder / "ema")
    assert model.config.num_classes == 10 and model.config.sample_size == 28


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    whole = tiny_config(tmp_path, "train.steps=6", "name=whole")
    fit(whole, tmp_path / "whole")
    interrupted = tiny_config(tmp_path, "train.steps=3", "name=parts")
    fit(interrupted, tmp_path / "parts")  # stops after step 3, its checkpoint
    resumed = tiny_config(tmp_path, "train.steps=6", "name=parts")  # a longer run may resume
    fit(resumed, tmp_path / "parts")
    a = load_pretrained(tmp_path / "whole" / "ema").state_dict()
    b = load_pretrained(tmp_path / "parts" / "ema").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_another_model_refuses_to_resume_a_checkpoint(tmp_path):
    fit(tiny_config(tmp_path, "train.steps=3", "name=x"), tmp_path / "x")
    with pytest.raises(ConfigError, match="other data, model"):
        fit(
            tiny_config(tmp_path, "train.steps=6", "name=x", "model.kind=switch-dit"),
            tmp_path / "x",
        )


def test_learned_sigma_is_refused_with_a_reason(tmp_path):
    config = tiny_config(tmp_path, "train.steps=1", "model.options={learn_sigma: true}")
    with pytest.raises(ConfigError, match="no VLB loss"):
        fit(config, tmp_path / "sigma")


@pytest.mark.parametrize("kind", ["switch-dit", "moe-dit"])
def test_mixture_of_experts_runs_log_expert_load(tmp_path, kind):
    results = fit(tiny_config(tmp_path, "train.steps=2", f"model.kind={kind}"), tmp_path / kind)
    last = results["history"][-1]
    assert last["experts/imbalance"] >= 1.0
    assert "experts/load_e0" in last


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_pipeline_samples_with_every_scheduler(tmp_path, scheduler, prediction):
    config = tiny_config(tmp_path, f"process.prediction_type={prediction}")
    model = load_pretrained_or_new(config)
    pipe = ClassConditionalPipeline(
        transformer=model, scheduler=make_scheduler(scheduler, noise_scheduler(config).config)
    )
    pipe.set_progress_bar_config(disable=True)

    def draw(seed: int, guidance: float):
        generator = torch.Generator().manual_seed(seed)
        return pipe(
            [0, 3, 9],
            num_inference_steps=3,
            guidance_scale=guidance,
            generator=generator,
            output_type="pt",
            progress=False,
        ).images

    first = draw(1, 2.0)
    assert first.shape == (3, 1, 28, 28)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, draw(1, 2.0))  # a seed gives the same images
    assert not torch.equal(first, draw(2, 2.0))
    with pytest.raises(ValueError, match=r"class labels must be in 0\.\.9"):
        pipe([10], num_inference_steps=1, progress=False)


def load_pretrained_or_new(config):
    """A tiny model with non-zero output layers, so guidance and seeds change the images."""
    from diffusion.train import build_model

    torch.manual_seed(0)
    model = build_model(config, 28, 10)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.abs().sum():
                parameter.normal_(0, 0.02)  # undo the zero init of adaLN and the final layer
    return model.eval()


def test_latent_space_sampling_decodes_through_the_vae():
    # A VAE with one 2x downsampling: the transformer works on 4x14x14 latents.
    from diffusers import AutoencoderKL, DDIMScheduler

    from diffusion.models import build_model

    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    ).eval()
    transformer = build_model(
        "DiT-T/2",
        sample_size=14,
        in_channels=4,
        num_classes=10,
        hidden_size=32,
        depth=1,
        num_heads=2,
        learn_sigma=False,
    ).eval()
    pipe = ClassConditionalPipeline(transformer=transformer, scheduler=DDIMScheduler(), vae=vae)
    images = pipe([1, 2], num_inference_steps=2, output_type="pt", progress=False).images
    assert images.shape == (2, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1
