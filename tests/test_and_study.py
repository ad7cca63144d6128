"""The AND study's own machinery: its batched likelihoods equal the plain ones."""

import pytest
import torch

from superdiff.digits import DigitModels, default_sigmas, load_conditional, load_fokker_planck
from superdiff.digits.model import Conditional
from superdiff.sampling import log_likelihood


@pytest.mark.parametrize("kind, load", [("net", load_conditional), ("fokker_planck", load_fokker_planck)])
def test_study_likelihoods_of_several_labels_in_one_batch_equal_separate_ones(kind, load):
    dig = DigitModels(ode_steps=6)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    both = dig.log_densities(kind, (3, 8), x, 0.01, probes=None)
    grid = default_sigmas(6)
    for row, c in zip(both, (3, 8), strict=True):
        torch.testing.assert_close(
            row, log_likelihood(Conditional(load(), c), x.double(), grid), atol=1e-4, rtol=0
        )
