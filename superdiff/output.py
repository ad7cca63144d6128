"""The result object shared by every SuperDiff pipeline (Stable Diffusion and the offline digits model)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .limits import warn_caller


@dataclass
class SuperDiffOutput:
    """Images with the κ and log q traces that made them; ``out[i]`` is image i, as in the model card.

    images: (B, H, W, 3) uint8 tensor (``output_type="pt"``), numpy array (``"np"``) or list of PIL
    images (``"pil"``); kappa: (n, B, N) float32 on CPU; log_q: (n + 1, B, N) float64 on CPU;
    sigmas: (n + 1,); samples: the model-space samples (latents, or digits in [−1, 1]); latents: the
    sampler's final x as it is, before any clamping or decoding: the point that ``log_q[-1]`` estimates at.
    """

    images: Tensor | np.ndarray | list
    kappa: Tensor
    log_q: Tensor
    sigmas: Tensor
    samples: Tensor | None = None
    latents: Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    mode: str = "and"

    def __getitem__(self, i):
        return self.images[i]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(self.images)

    def to_pil(self) -> list[Image.Image]:
        """The images as PIL images, whatever the output_type."""
        return [
            im
            if isinstance(im, Image.Image)
            else Image.fromarray(np.asarray(im.cpu() if isinstance(im, Tensor) else im))
            for im in self.images
        ]


def to_uint8(images: Tensor) -> Tensor:
    """(B, C, H, W) floats in [−1, 1] -> (B, H, W, C) uint8 on CPU; warns of NaN or ±inf pixels."""
    bad = (~torch.isfinite(images)).flatten(1).any(1).nonzero().flatten().tolist()
    if bad:  # a warning, not an error: the output keeps the latents, to decode again
        warn_caller(
            f"images: the VAE decoded NaN or infinite values in image {', '.join(map(str, bad))}, drawn "
            "black there; a float16 VAE can overflow: pipe.vae.to(torch.float32) decodes out.latents again "
            "(pipe.decode_latents(out.latents))",
            RuntimeWarning,
        )
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def format_images(images: Tensor, output_type: str):
    """Images (B, H, W, 3) uint8 as "pt" (tensor), "np" (array) or "pil" (list of PIL images)."""
    if output_type == "pt":
        return images
    if output_type == "np":
        return images.numpy()
    if output_type == "pil":
        return [Image.fromarray(im.numpy()) for im in images]
    raise ValueError(f"output_type: expected 'pt', 'np' or 'pil', got {output_type!r}")
