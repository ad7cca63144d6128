"""Offline, CPU-sized SuperDiff on scikit-learn's 8×8 digits: trained models, pipeline, experiments."""

from .densities import DigitModels
from .model import (
    NAMES,
    Classifier,
    EpsNet,
    classifier,
    default_sigmas,
    digits_split,
    label_of,
    load_conditional,
    load_fokker_planck,
    load_full_model,
    load_half_models,
)
from .pipeline import DigitPredictor, DigitsPipeline, load_pipeline

__all__ = [
    "NAMES",
    "Classifier",
    "DigitModels",
    "DigitPredictor",
    "DigitsPipeline",
    "EpsNet",
    "classifier",
    "default_sigmas",
    "digits_split",
    "label_of",
    "load_conditional",
    "load_fokker_planck",
    "load_full_model",
    "load_half_models",
    "load_pipeline",
]
