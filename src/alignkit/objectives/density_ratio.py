"""BCO's underlying distribution matching (UDM): a density-ratio classifier that reweights unpaired data.

Binary Classifier Optimization (Jung et al. 2024, https://arxiv.org/abs/2404.04656, section 4.2): thumbs-up
(desirable, D) and thumbs-down (undesirable, U) data usually come from different prompt distributions
p_D(x) and p_U(x) — a model good at writing and bad at code gets its thumbs-down on code prompts. BCO's
loss on undesirable examples is an expectation over p_U; weighting each one by the density ratio
``r(x) = p_D(x) / p_U(x)`` turns it into an expectation over p_D, so both halves of the loss see the same
prompts: ``E_{x~p_U}[r(x)·ℓ_U(x)] = E_{x~p_D}[ℓ_U(x)]``.

The ratio comes from a probabilistic classifier c(x) ≈ P(D | x) trained to tell D prompts from U
prompts with **balanced** class weights (each class's examples weigh 1/(2·n_class) in total), so the
class prior is ½ and Bayes' rule gives ``r(x) = c(x) / (1 − c(x)) = exp(logit(x))``. Here c is L2-
regularised logistic regression on prompt features (any vectors: hashed n-grams, embeddings), so the
log-ratio is linear in the features — exact when the two feature distributions are Gaussians with a
shared covariance. The weights are clipped to ``[min_ratio, max_ratio]`` (TRL's BCOTrainer uses 0.5 and
10) so a prompt the classifier is sure about cannot dominate or vanish.

`alignkit.data.transforms_udm.udm` applies this to records (features from the prompts, weights on the
undesirable records).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import ConfigError


class RatioModel(NamedTuple):
    """``log r(x) = x·weight + bias`` (the logistic classifier's logit with balanced classes)."""

    weight: Tensor  # [D]
    bias: Tensor  # []
    mean: Tensor  # [D] feature mean used to centre inputs (fitted on both classes)

    def log_ratio(self, x: Tensor) -> Tensor:
        """``log p_D(x)/p_U(x)`` estimated for features ``x`` [N, D] -> [N]."""
        return (x.to(self.weight.dtype) - self.mean) @ self.weight + self.bias


def fit_density_ratio(numerator: Tensor, denominator: Tensor, l2: float = 1e-3, max_iter: int = 500) -> RatioModel:
    """Fit ``log p_num(x) / p_den(x)`` by class-balanced, L2-regularised logistic regression.

    Minimises ``½·mean_num[−logσ(f(x))] + ½·mean_den[−logσ(−f(x))] + (l2/2)·‖w‖²`` with
    ``f(x) = (x − μ)·w + b`` (μ the pooled feature mean; the bias is not penalised) by L-BFGS in float64.
    The minimiser's logit f estimates the log density ratio (module docstring).

    Args:
        numerator: [N1, D] features of samples from p_num (BCO: desirable prompts).
        denominator: [N2, D] features of samples from p_den (BCO: undesirable prompts).
        l2: ≥ 0, ridge penalty on w (keeps the classifier from separating the samples perfectly, where the
            ratios would run off to 0 and ∞).
        max_iter: L-BFGS iterations.
    """
    if numerator.dim() != 2 or denominator.dim() != 2 or numerator.shape[1] != denominator.shape[1]:
        raise ValueError(f"features must be [N1, D] and [N2, D], got {tuple(numerator.shape)} and "
                         f"{tuple(denominator.shape)}")
    if len(numerator) == 0 or len(denominator) == 0:
        raise ValueError("density-ratio fitting needs samples from both distributions")
    if not l2 >= 0:
        raise ConfigError(f"l2 must be >= 0, got {l2}")
    num, den = numerator.double(), denominator.double()
    mean = torch.cat([num, den]).mean(dim=0)
    num, den = num - mean, den - mean
    w = torch.zeros(num.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (-F.logsigmoid(num @ w + b).mean() - F.logsigmoid(-(den @ w + b)).mean()) / 2 + l2 / 2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return RatioModel(w.detach(), b.detach(), mean)


def clipped_ratio(log_ratio: Tensor, min_ratio: float = 0.5, max_ratio: float = 10.0) -> Tensor:
    """UDM weights ``clip(exp(log_ratio), min_ratio, max_ratio)``."""
    if not 0 <= min_ratio <= max_ratio:
        raise ConfigError(f"need 0 <= min_ratio <= max_ratio, got min_ratio={min_ratio}, max_ratio={max_ratio}")
    return log_ratio.exp().clamp(min=min_ratio, max=max_ratio)
