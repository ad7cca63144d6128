"""SuperDiff: superpose diffusion models (OR / AND) with the Itô density estimator.

Skreta et al., "The Superposition of Diffusion Models Using the Itô Density Estimator",
ICLR 2025 (arXiv 2412.17762).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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
    "SuperDiffWarning",
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

# Each name is imported on first use, so that ``superdiff --help`` (and a Ctrl-C while it starts) does
# not wait for torch, nor ``import superdiff`` for diffusers.
_PIPELINES = {
    "SuperDiffPipeline": ".pipeline_superdiff",
    "SuperDiffXLPipeline": ".pipeline_xl",
    "SuperDiffSD3Pipeline": ".pipeline_sd3",
    "SuperDiffFluxPipeline": ".pipeline_flux",
}
_OTHERS = {**_PIPELINES, "SuperDiffWarning": ".limits"}
_MODULE_OF = {name: _OTHERS.get(name, ".sampling") for name in __all__}

if TYPE_CHECKING:  # what editors and type checkers see
    from .limits import SuperDiffWarning
    from .pipeline_flux import SuperDiffFluxPipeline
    from .pipeline_sd3 import SuperDiffSD3Pipeline
    from .pipeline_superdiff import SuperDiffPipeline
    from .pipeline_xl import SuperDiffXLPipeline
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


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'superdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
