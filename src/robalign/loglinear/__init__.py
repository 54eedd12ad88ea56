"""Exact log-linear engine: policies, robust losses, R-SCGD and stationarity measures: the
theory of oracle-robust online alignment (Li, Gaur, Aggarwal 2026, arXiv 2602.20457) checked to the last digit."""

from robalign.loglinear.instances import LogLinearInstance, random_instance
from robalign.loglinear.policy import LogLinearPolicy, adversarial_oracle, antisymmetric
from robalign.loglinear.rscgd import (
    ProxRefineResult,
    RSCGDBatch,
    RSCGDResult,
    projected_onto_ball,
    proximal_refine_exact,
    rscgd,
    sample_batch,
    surrogate_loss,
)
from robalign.loglinear.stationarity import (
    envelope_lambda,
    moreau_envelope_grad_norm,
    prox_point,
    robust_weak_convexity_bound,
    sail_weak_convexity_bound,
    sensitivity_weak_convexity_bound,
)

__all__ = [
    "LogLinearInstance",
    "LogLinearPolicy",
    "ProxRefineResult",
    "RSCGDBatch",
    "RSCGDResult",
    "adversarial_oracle",
    "antisymmetric",
    "envelope_lambda",
    "moreau_envelope_grad_norm",
    "projected_onto_ball",
    "prox_point",
    "proximal_refine_exact",
    "random_instance",
    "robust_weak_convexity_bound",
    "rscgd",
    "sail_weak_convexity_bound",
    "sample_batch",
    "sensitivity_weak_convexity_bound",
    "surrogate_loss",
]
