"""R-SCGD on the exact engine: projected stochastic composite gradient descent (Li, Gaur, Aggarwal 2026, arXiv 2602.20457).

Per step t: sample B prompts x ~ μ, two responses y1, y2 ~ π_θt(·|x), a label from the observed oracle,
and step along

    G = mean_i[∇ℓ_i + sf_coef·(ℓ_i − b)·(∇lp_θ(y1) + ∇lp_θ(y2))],
    ℓ_i = softplus(−β h(y_w, y_l)) + ρβ|h(y1, y2)|,   b = mean_i ℓ_i (detached),

then project onto the ball ‖θ − θ_ref‖ ≤ D. With sf_coef = 1 and no baseline, E[G] = ∇L^W_ρ(θ) exactly
(the score-function term is what differentiates the sampling distribution π_θ ⊗ π_θ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robalign.loglinear.policy import LogLinearPolicy, check_beta_rho

__all__ = [
    "ProxRefineResult",
    "RSCGDBatch",
    "RSCGDResult",
    "projected_onto_ball",
    "proximal_refine_exact",
    "rscgd",
    "sample_batch",
    "surrogate_loss",
]


@dataclass
class RSCGDBatch:
    """One on-policy mini-batch; every field is [B].

    Attributes:
        prompts: prompt indices x_i.
        y1, y2: response indices, iid from π_θ(·|x_i) (ties allowed).
        y1_wins: bool label from the observed oracle, True when y1 ≻ y2.
    """

    prompts: torch.Tensor
    y1: torch.Tensor
    y2: torch.Tensor
    y1_wins: torch.Tensor


@dataclass
class RSCGDResult:
    """What `rscgd` returns.

    Attributes:
        theta: [d] the output iterate θ_R.
        output_rule: "random" (R uniform on {0, …, T−1}, the theory's output) or "last" (R = T).
        output_index: R, the step index of `theta`.
        theta_last: [d] θ_T.
        snapshots: [S, d] θ_t at `snapshot_steps` (every `snapshot_every` steps, plus t = T).
        snapshot_steps: the t of each snapshot.
        metrics: one dict per step t = 0..T−1: `loss` (batch mean of ℓ_i at θ_t), `grad_norm` (‖G‖),
            `dist_to_ref` (‖θ_{t+1} − θ_ref‖), `projected` (whether the projection was active).
    """

    theta: torch.Tensor
    output_rule: str
    output_index: int
    theta_last: torch.Tensor
    snapshots: torch.Tensor
    snapshot_steps: list[int]
    metrics: list[dict[str, float]]


@dataclass
class ProxRefineResult:
    """What `proximal_refine_exact` returns: the refined point, steps taken, final residual, and convergence."""

    theta: torch.Tensor
    steps: int
    residual: float
    converged: bool


def projected_onto_ball(
    theta: torch.Tensor, centre: torch.Tensor, radius: float | None
) -> tuple[torch.Tensor, bool]:
    """Proj onto {θ : ‖θ − centre‖ ≤ radius} (Θ is a ball around θ_ref, as in R-SCGD); None means no constraint.

    A new point; the training runs' counterpart, `robalign.methods.oracle_robust_iterates.
    project_weights_onto_ball`, projects a model's weight tensors in place. Same map, kept apart because
    each keeps its own arithmetic (one [d] vector here; float64 sums over many tensors there).

    Returns:
        ([d] projected point, whether the projection moved it).
    """
    if radius is None:
        return theta, False
    offset = theta - centre
    norm = offset.norm()
    if norm <= radius:
        return theta, False
    return centre + offset * (radius / norm), True


def sample_batch(
    policy: LogLinearPolicy,
    theta: torch.Tensor,
    p_observed: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> RSCGDBatch:
    """Draw x ~ μ, y1, y2 iid ~ π_θ(·|x), and y1 ≻ y2 with probability p_observed[x, y1, y2]."""
    with torch.no_grad():
        prompts = torch.multinomial(policy.prompt_weights, batch_size, replacement=True, generator=generator)
        probs = policy.log_probs(theta).exp()[prompts]
        pairs = torch.multinomial(probs, 2, replacement=True, generator=generator)  # iid draws
        y1, y2 = pairs[:, 0], pairs[:, 1]
        coin = torch.rand(batch_size, generator=generator, dtype=p_observed.dtype)
        y1_wins = coin < p_observed[prompts, y1, y2]
    return RSCGDBatch(prompts=prompts, y1=y1, y2=y2, y1_wins=y1_wins)


def surrogate_loss(
    policy: LogLinearPolicy,
    theta: torch.Tensor,
    batch: RSCGDBatch,
    *,
    beta: float,
    rho: float,
    sf_coef: float = 1.0,
    baseline: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A scalar whose gradient in θ is R-SCGD's estimate G, and the per-sample losses ℓ_i.

    Args:
        policy: the exact engine.
        theta: [d] with requires_grad.
        batch: the mini-batch (B samples).
        beta, rho: β and ρ.
        sf_coef: weight of the score-function term; 0 is the behaviour-policy approximation.
        baseline: subtract b = mean ℓ (detached) in the score term; without it E[G] = ∇L^W exactly.

    Returns:
        (surrogate scalar, [B] ℓ_i).
    """
    h = policy.margins(theta)[batch.prompts, batch.y1, batch.y2]  # h(y1, y2), [B]
    signed = torch.where(batch.y1_wins, h, -h)  # h(y_w, y_l)
    per_sample = F.softplus(-beta * signed) + rho * beta * h.abs()  # ℓ_i = softplus(−βh_w) + ρβ|h|
    log_probs = policy.log_probs(theta)
    score_logp = log_probs[batch.prompts, batch.y1] + log_probs[batch.prompts, batch.y2]
    detached = per_sample.detach()
    advantage = detached - detached.mean() if baseline else detached
    surrogate = (per_sample + sf_coef * advantage * score_logp).mean()  # its gradient is R-SCGD's estimate G
    return surrogate, per_sample


def _make_optimizer(name: str, theta: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    # Plain SGD with a constant step is the theory's optimiser; Adam is an allowed option.
    if name == "sgd":
        return torch.optim.SGD([theta], lr=lr)
    if name == "adam":
        return torch.optim.Adam([theta], lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def _check_rscgd_args(steps: int, batch_size: int, lr: float, output: str, snapshot_every: int) -> None:
    if steps < 1 or batch_size < 1 or snapshot_every < 1:
        raise ValueError("steps, batch_size and snapshot_every must be >= 1")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if output not in ("random", "last"):
        raise ValueError(f"output must be 'random' or 'last', got {output!r}")


def _rscgd_step(
    policy: LogLinearPolicy,
    theta: torch.Tensor,
    opt: torch.optim.Optimizer,
    batch: RSCGDBatch,
    radius: float | None,
    config: dict,
) -> torch.Tensor:
    """θ ← Proj_Θ(θ − ηG) in place (the R-SCGD update); returns [loss, ‖G‖, ‖θ_new − θ_ref‖, projected] as a tensor."""
    opt.zero_grad()
    surrogate, per_sample = surrogate_loss(policy, theta, batch, **config)
    surrogate.backward()
    grad_norm = theta.grad.norm()
    opt.step()
    with torch.no_grad():
        projected_theta, projected = projected_onto_ball(theta, policy.theta_ref, radius)
        theta.copy_(projected_theta)
        distance = (theta - policy.theta_ref).norm()
    flag = torch.tensor(float(projected), dtype=grad_norm.dtype)
    return torch.stack([per_sample.detach().mean(), grad_norm, distance, flag])


def rscgd(
    policy: LogLinearPolicy,
    p_observed: torch.Tensor,
    *,
    beta: float,
    rho: float,
    steps: int,
    batch_size: int,
    lr: float,
    radius: float | None = None,
    sf_coef: float = 1.0,
    seed: int = 0,
    output: str = "random",
    snapshot_every: int = 1,
    optimizer: str = "sgd",
    theta0: torch.Tensor | None = None,
    baseline: bool = True,
) -> RSCGDResult:
    """Run R-SCGD for `steps` steps from θ_0 (θ_ref by default). Deterministic given `seed`.

    Args:
        policy: the exact engine (its π_θ is sampled, so this is the stochastic algorithm).
        p_observed: [X, Y, Y] the oracle that labels the samples.
        beta, rho: β > 0, ρ ∈ [0, 0.5).
        steps: T.
        batch_size: B.
        lr: η, constant.
        radius: D of the ball around θ_ref; None for no projection.
        sf_coef: 1 is the paper's gradient, 0 the behaviour-policy approximation.
        seed: seeds the one generator used for R and every sample.
        output: "random" (θ_R, R uniform on {0..T−1}) or "last" (θ_T).
        snapshot_every: keep θ_t for t a multiple of this (and t = T).
        optimizer: "sgd" or "adam".
        theta0: [d] starting point (projected onto the ball).
        baseline: see `surrogate_loss`.
    """
    check_beta_rho(beta, rho)
    _check_rscgd_args(steps, batch_size, lr, output, snapshot_every)
    generator = torch.Generator().manual_seed(seed)
    # R is drawn first and always, so the trajectory does not depend on the output rule.
    random_index = int(torch.randint(steps, (1,), generator=generator))
    start = policy.theta_ref if theta0 is None else theta0.to(policy.features.dtype)
    theta = projected_onto_ball(start.detach().clone(), policy.theta_ref, radius)[0].requires_grad_(True)
    opt = _make_optimizer(optimizer, theta, lr)
    config = dict(beta=beta, rho=rho, sf_coef=sf_coef, baseline=baseline)
    snapshots, snapshot_steps, rows, chosen = [], [], [], None
    for t in range(steps):
        if t % snapshot_every == 0:
            snapshots.append(theta.detach().clone())
            snapshot_steps.append(t)
        if t == random_index:
            chosen = theta.detach().clone()
        batch = sample_batch(policy, theta.detach(), p_observed, batch_size, generator)
        rows.append(_rscgd_step(policy, theta, opt, batch, radius, config))
    theta_last = theta.detach().clone()
    snapshots.append(theta_last)
    snapshot_steps.append(steps)
    # One host sync for all metrics, at the end (STYLE: keep metrics as tensors until logging).
    keys = ("loss", "grad_norm", "dist_to_ref", "projected")
    metrics = [dict(zip(keys, row)) for row in torch.stack(rows).tolist()]
    for row in metrics:
        row["projected"] = bool(row["projected"])
    if output == "last":
        chosen, random_index = theta_last, steps
    return RSCGDResult(
        theta=chosen,
        output_rule=output,
        output_index=random_index,
        theta_last=theta_last,
        snapshots=torch.stack(snapshots),
        snapshot_steps=snapshot_steps,
        metrics=metrics,
    )


def proximal_refine_exact(
    policy: LogLinearPolicy,
    theta_r: torch.Tensor,
    p_star: torch.Tensor,
    *,
    beta: float,
    rho: float,
    lam_env: float,
    steps: int = 200,
    lr: float | None = None,
    eps_prox: float = 1e-6,
    radius: float | None = None,
) -> ProxRefineResult:
    """Optional proximal refinement from θ_R (arXiv 2602.20457): K projected steps on L^W_ρ(θ) + ‖θ − θ_R‖²/(2λ_env).

    With the engine's exact gradients; a training run refines its model on mini-batches instead
    (`robalign.methods.oracle_robust_prox.proximal_refine_model`).

    Exact gradients from the engine replace the mini-batch estimate. The residual is the gradient-mapping
    norm ‖θ − Proj(θ − η∇F(θ))‖/η (= ‖∇F‖ without projection); the loop stops once it is < eps_prox.
    At a kink of R (some h = 0) autograd takes the subgradient 0 of |h| there, so the residual may not fall
    below eps_prox; `converged` reports it.

    Args:
        policy: the exact engine.
        theta_r: [d] the point to refine (the R-SCGD output).
        p_star: [X, Y, Y] centre of the uncertainty set.
        beta, rho: β and ρ.
        lam_env: λ_env < 1/κ (see `envelope_lambda`), making the subproblem strongly convex.
        steps: K, the most steps.
        lr: η; default λ_env/2 (the proximal term alone has curvature 1/λ_env).
        eps_prox: ε_prox.
        radius: D of the ball around θ_ref; None for no projection.
    """
    check_beta_rho(beta, rho)
    lr = lam_env / 2.0 if lr is None else lr
    anchor = theta_r.detach().to(policy.features.dtype)
    theta, residual = anchor.clone(), float("inf")
    for k in range(steps):
        point = theta.clone().requires_grad_(True)
        objective = policy.robust_loss(point, p_star, beta=beta, rho=rho)
        objective = objective + (point - anchor).pow(2).sum() / (2.0 * lam_env)
        (grad,) = torch.autograd.grad(objective, point)
        stepped, _ = projected_onto_ball(theta - lr * grad, policy.theta_ref, radius)
        residual = ((theta - stepped).norm() / lr).item()
        if residual < eps_prox:
            return ProxRefineResult(theta=theta, steps=k, residual=residual, converged=True)
        theta = stepped
    return ProxRefineResult(theta=theta, steps=steps, residual=residual, converged=False)
