"""Evaluation: sampled KL to a reference model, confidence intervals, reward–KL frontiers."""

from alignkit.eval.kl import kl_estimates, kl_k1, kl_k2, kl_k3, mean_ci

__all__ = ["kl_estimates", "kl_k1", "kl_k2", "kl_k3", "mean_ci"]
