"""SuperDiff: superpose diffusion models (OR / AND) with the Itô density estimator.

Skreta et al., "The Superposition of Diffusion Models Using the Itô Density Estimator",
ICLR 2025 (arXiv 2412.17762).
"""

from .sampling import (
    MODES,
    Guided,
    ModelList,
    NonFiniteError,
    Prediction,
    Predictor,
    StopSampling,
    SuperpositionResult,
    curvature_terms,
    geometric_sigmas,
    guide,
    ito_increment,
    kappa_and,
    kappa_or,
    karras_sigmas,
    log_likelihood,
    probability_flow,
    superpose,
)

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "Guided",
    "ModelList",
    "NonFiniteError",
    "Prediction",
    "Predictor",
    "SuperDiffFluxPipeline",
    "SuperDiffPipeline",
    "SuperDiffSD3Pipeline",
    "SuperDiffXLPipeline",
    "StopSampling",
    "SuperpositionResult",
    "curvature_terms",
    "geometric_sigmas",
    "guide",
    "ito_increment",
    "kappa_and",
    "kappa_or",
    "karras_sigmas",
    "log_likelihood",
    "probability_flow",
    "superpose",
]


def __getattr__(name):
    # diffusers takes seconds to import: load the Stable Diffusion pipeline only when asked for.
    if name == "SuperDiffPipeline":
        from .pipeline_superdiff import SuperDiffPipeline

        return SuperDiffPipeline
    if name == "SuperDiffXLPipeline":
        from .pipeline_xl import SuperDiffXLPipeline

        return SuperDiffXLPipeline
    if name == "SuperDiffSD3Pipeline":
        from .pipeline_sd3 import SuperDiffSD3Pipeline

        return SuperDiffSD3Pipeline
    if name == "SuperDiffFluxPipeline":
        from .pipeline_flux import SuperDiffFluxPipeline

        return SuperDiffFluxPipeline
    raise AttributeError(f"module 'superdiff' has no attribute {name!r}")
