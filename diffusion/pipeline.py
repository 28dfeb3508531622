"""Class-conditional sampling as a diffusers ``DiffusionPipeline``.

    pipe = ClassConditionalPipeline(transformer=model, scheduler=DDIMScheduler.from_config(cfg))
    images = pipe([0, 7, 9], num_inference_steps=50, guidance_scale=2.0, generator=g).images

The scheduler is swappable (DDPM, DDIM, DPM-Solver: anything with diffusers'
``set_timesteps`` / ``step`` interface, built from the training scheduler's
config so the noise schedule and prediction type match). Classifier-free
guidance runs the conditional and the null-class batch together. Pixel space
by default; with a ``vae`` the transformer works on latents and the images are
decoded at the end.
"""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    ImagePipelineOutput,
)
from diffusers.utils.torch_utils import randn_tensor

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm-solver": DPMSolverMultistepScheduler,
}


def make_scheduler(name: str, training_config) -> object:
    """A sampling scheduler of kind ``name`` sharing the training schedule's config."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    config = dict(training_config)
    if name != "ddpm":
        # Only DDPM can use a learned variance; the others take the mean prediction.
        config.pop("variance_type", None)
    return SCHEDULERS[name].from_config(config)


class ClassConditionalPipeline(DiffusionPipeline):
    """Sample images of given classes from a DiT-style ``transformer``."""

    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer, scheduler, vae=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        progress: bool = True,
    ):
        transformer = self.transformer
        config = transformer.config
        device = next(transformer.parameters()).device
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        if ((labels < 0) | (labels >= config.num_classes)).any():
            raise ValueError(f"class labels must be in 0..{config.num_classes - 1}, got {labels}")
        channels = config.in_channels
        shape = (labels.numel(), channels, config.sample_size, config.sample_size)
        x = randn_tensor(shape, generator=generator, device=device, dtype=transformer.dtype)
        x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        guided = guidance_scale != 1.0
        null = torch.full_like(labels, _null_class(config))
        learned_variance = getattr(self.scheduler.config, "variance_type", None) in (
            "learned",
            "learned_range",
        )

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        steps = self.scheduler.timesteps
        for t in self.progress_bar(steps) if progress else steps:
            model_input = torch.cat([x, x]) if guided else x
            model_input = self.scheduler.scale_model_input(model_input, t)
            timestep = torch.full((model_input.shape[0],), int(t), device=device)
            out = transformer(
                model_input, timestep, torch.cat([labels, null]) if guided else labels
            ).sample
            mean, variance = out[:, :channels], out[:, channels:]
            if guided:
                conditional, unconditional = mean.chunk(2)
                mean = unconditional + guidance_scale * (conditional - unconditional)
                variance = variance.chunk(2)[0]
            # A learned variance is used by the schedulers that can (DDPM "learned_range").
            prediction = (
                torch.cat([mean, variance], 1) if learned_variance and variance.numel() else mean
            )
            x = self.scheduler.step(prediction, t, x, generator=generator).prev_sample

        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = images
        else:
            result = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        return ImagePipelineOutput(images=result) if return_dict else (result,)


def _null_class(config) -> int:
    null = getattr(config, "null_class_id", None)
    return config.num_classes if null is None else null
