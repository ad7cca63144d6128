"""Scores of sweep images against each of their prompts: CLIP for Stable Diffusion, the classifier for digits.

A scorer maps (pipeline output, prompts) to a (B, P) tensor; the paper reports per image the min and the
mean over its two prompts (a superposition should match both, so min is the stricter number).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..hub import explain_unavailable, folder_errors, offline_kwargs
from ..output import SuperDiffOutput
from .plan import DEFAULT_CLIP


class ClipScorer:
    """CLIP score 100·cos(image, text) with transformers' CLIPModel (the paper's image-text similarity)."""

    name = "CLIP score (100·cos)"

    def __init__(self, model, processor, device="cpu"):
        self.model, self.processor, self.device = model.eval().to(device), processor, device

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_CLIP, device="cpu") -> ClipScorer:
        """CLIPModel and CLIPProcessor from a Hub id or local folder; a one-line error if unreachable."""
        from transformers import CLIPModel, CLIPProcessor

        offline = offline_kwargs(name)  # an unreachable Hub: the cache answers at once, not after ~30 s
        with explain_unavailable(name):
            model = CLIPModel.from_pretrained(name, **offline)
            return cls(model, CLIPProcessor.from_pretrained(name, **offline), device)

    @torch.no_grad()
    def __call__(self, out: SuperDiffOutput, prompts: list[str]) -> Tensor:
        """(B, P): the score of every image against every prompt."""
        inputs = self.processor(
            text=list(prompts), images=out.to_pil(), return_tensors="pt", padding=True, truncation=True
        )
        result = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return 100 * (result.image_embeds @ result.text_embeds.T).float().cpu()


class DigitsScorer:
    """The shipped digits classifier's probability of each prompt's digit."""

    name = "classifier probability"

    def __init__(self):
        from ..digits import classifier

        self.classifier = classifier()

    def __call__(self, out: SuperDiffOutput, prompts: list[str]) -> Tensor:
        """(B, P): p(digit of prompt k | image)."""
        from ..digits import label_of

        labels = [label_of(p) for p in prompts]
        return self.classifier.predict_proba(out.samples)[:, labels]


def load_scorer(kind: str, clip_model: str = DEFAULT_CLIP, device="cpu"):
    """The scorer behind --scorer: "clip", "digits" or "none" (None)."""
    if kind == "clip":
        with folder_errors(clip_model, "--clip-model"):
            return ClipScorer.from_pretrained(clip_model, device)
    if kind == "digits":
        return DigitsScorer()
    return None
