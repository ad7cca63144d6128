"""SuperDiff as a diffusers custom pipeline (Skreta et al., ICLR 2025, arXiv 2412.17762).

Use with any Stable Diffusion 1.x / 2.x checkpoint (needs the ``superdiff`` package installed)::

    from diffusers import DiffusionPipeline
    from superdiff.pipeline_superdiff import CUSTOM_PIPELINE  # the path of this file

    pipe = DiffusionPipeline.from_pretrained(
        "CompVis/stable-diffusion-v1-4", custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True
    )
    out = pipe("a flamingo", "a candy cane", seed=1, num_inference_steps=1000, batch_size=1)

Copied next to a checkpoint's model_index.json, ``custom_pipeline="pipeline"`` finds it too, but only where
the kit is installed. For a folder or Hub repository that works with diffusers alone, write a self-contained
pipeline.py with ``superdiff export-hub OUT`` (:mod:`superdiff.export`).
"""

from superdiff.pipeline_superdiff import SuperDiffPipeline

__all__ = ["SuperDiffPipeline"]
