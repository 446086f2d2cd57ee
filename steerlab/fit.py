"""Direction estimators, batched over layers.

An estimator maps paired activations ``pos, neg`` ``[n_pairs, n_layers, d_model]`` to one
direction per layer ``[n_layers, d_model]``, in activation coordinates:

- ``logistic`` (default; the paper's): for pair i the difference d_i = x+_i - x-_i and the
  symmetric data set {(d_i, 1), (-d_i, 0)}; features standardised on that set; L2 logistic
  regression without intercept (the symmetry makes one pointless); the coefficients divided
  by the feature scale, back into activation coordinates.
- ``mean_diff``: the mean of d_i (plain CAA).
- ``pca``: the first principal component of the symmetric set {d_i, -d_i}, signed to agree with
  the mean difference and scaled by the mean projection onto it, so its norm is comparable to
  ``mean_diff``'s.

The logistic fit never calls an iterative solver per layer. It runs Newton's method batched
over all layers at once (and over cross-validation folds, see :mod:`steerlab.diagnostics`), on
whatever device the tensors are, in the smaller of two spaces: usually n pairs << d_model, and
then in the dual (the weights lie in the span of the standardised differences, w = Z^T a, so
each step is an n x n solve on the Gram matrix K = Z Z^T); with more pairs than dimensions, in
the primal (a d x d solve).

The objective is scikit-learn's, so ``C`` means what it means there:
    1/2 |w|^2 + C * sum over the 2n symmetric samples of log(1 + exp(-y w.z))
  = 1/2 |w|^2 + 2C * sum_i softplus(-w.z_i)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from steerlab.errors import ConfigError

METHODS = ("logistic", "mean_diff", "pca")
DEFAULT_C = 1.0

Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``[n, L, D]`` x2 -> ``[L, D]``: the mean paired difference."""
    return (pos - neg).mean(0)


def pca(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal component of the symmetric set {d_i, -d_i}, signed and scaled by the mean projection.

    That set has mean zero, so its principal axis is the top right singular vector of the
    *uncentred* differences. (Centring the d_i instead would remove the very offset that all
    pairs share.)
    """
    diffs = (pos - neg).transpose(0, 1).double()  # [L, n, D]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    axis = vh[:, 0, :]  # [L, D], unit norm
    proj = torch.einsum("lnd,ld->l", diffs, axis) / diffs.shape[1]  # mean projection of d_i
    return (axis * proj[:, None]).to(pos.dtype)


def feature_scale(diffs: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each feature over the symmetric set {d_i, -d_i} (its mean is 0).

    ``diffs`` ``[..., n, D]`` -> ``[..., D]``; zero-variance features get scale 1, as in
    scikit-learn's StandardScaler.
    """
    scale = diffs.pow(2).mean(-2).sqrt()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _damped_newton(x, objective, newton_step, max_iter: int, tol: float) -> torch.Tensor:
    """Minimise a batch of strictly convex objectives; ``x`` ``[B, k]``.

    ``objective(x) -> [B]``; ``newton_step(x) -> [B, k]``. Each step is halved, per batch
    element, until the objective does not increase; iteration stops when every element's
    objective changes by less than ``tol`` relative.
    """
    current = objective(x)
    for _ in range(max_iter):
        step = newton_step(x)
        t = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(30):
            candidate = x - t[:, None] * step
            value = objective(candidate)
            worse = value > current + 1e-12 * current.abs()
            if not worse.any():
                break
            t = torch.where(worse, t / 2, t)
        x, previous, current = candidate, current, value
        if ((previous - current).abs() <= tol * current.abs().clamp_min(1.0)).all():
            break
    return x


def logistic_dual(gram: torch.Tensor, c: float = DEFAULT_C, max_iter: int = 100, tol: float = 1e-10) -> torch.Tensor:
    """Dual coefficients ``a`` ``[B, n]`` (w = Z^T a) for each Gram matrix K = Z Z^T ``[B, n, n]``.

    The gradient in ``a`` is K r with r = a - 2C sigmoid(-K a) and the Hessian is
    K (I + 2C W K) with W = diag(p (1 - p)), so (I + 2C W K)^-1 r is a Newton step: one n x n
    solve per layer. For n << d_model.
    """
    gram = gram.double()
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)

    def objective(alpha: torch.Tensor) -> torch.Tensor:
        margins = torch.einsum("bij,bj->bi", gram, alpha)
        return 0.5 * (alpha * margins).sum(-1) + 2 * c * torch.nn.functional.softplus(-margins).sum(-1)

    def newton_step(alpha: torch.Tensor) -> torch.Tensor:
        margins = torch.einsum("bij,bj->bi", gram, alpha)
        p = torch.sigmoid(margins)
        residual = alpha - 2 * c * torch.sigmoid(-margins)
        system = eye + 2 * c * (p * (1 - p))[:, :, None] * gram
        return torch.linalg.solve(system, residual.unsqueeze(-1)).squeeze(-1)

    alpha = torch.zeros(gram.shape[:2], dtype=gram.dtype, device=gram.device)
    return _damped_newton(alpha, objective, newton_step, max_iter, tol)


def logistic_primal(z: torch.Tensor, c: float = DEFAULT_C, max_iter: int = 100, tol: float = 1e-10) -> torch.Tensor:
    """Weights ``w`` ``[B, d]`` on standardised differences ``z`` ``[B, n, d]``: one d x d solve per
    step (gradient w - 2C Z^T sigmoid(-Z w), Hessian I + 2C Z^T W Z). For n >= d_model."""
    z = z.double()
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)

    def objective(w: torch.Tensor) -> torch.Tensor:
        margins = torch.einsum("bnd,bd->bn", z, w)
        return 0.5 * (w * w).sum(-1) + 2 * c * torch.nn.functional.softplus(-margins).sum(-1)

    def newton_step(w: torch.Tensor) -> torch.Tensor:
        margins = torch.einsum("bnd,bd->bn", z, w)
        p = torch.sigmoid(margins)
        grad = w - 2 * c * torch.einsum("bnd,bn->bd", z, torch.sigmoid(-margins))
        hessian = eye + 2 * c * torch.einsum("bnd,bn,bne->bde", z, p * (1 - p), z)
        return torch.linalg.solve(hessian, grad.unsqueeze(-1)).squeeze(-1)

    w = torch.zeros(z.shape[0], z.shape[-1], dtype=z.dtype, device=z.device)
    return _damped_newton(w, objective, newton_step, max_iter, tol)


def logistic_standardised(z: torch.Tensor, c: float = DEFAULT_C, max_iter: int = 100) -> torch.Tensor:
    """Weights ``[B, d]`` for standardised differences ``[B, n, d]``, in whichever space is smaller."""
    n, d = z.shape[-2:]
    if n <= d:
        alpha = logistic_dual(z @ z.transpose(-1, -2), c=c, max_iter=max_iter)  # [B, n]
        return torch.einsum("bn,bnd->bd", alpha.to(z.dtype), z)
    return logistic_primal(z, c=c, max_iter=max_iter).to(z.dtype)


def logistic(
    pos: torch.Tensor, neg: torch.Tensor, c: float = DEFAULT_C, layer_chunk: int = 16, max_iter: int = 100
) -> torch.Tensor:
    """Paired logistic-regression directions ``[L, D]`` in activation coordinates.

    Layers are processed ``layer_chunk`` at a time to bound memory (the standardised
    differences of a chunk, ``[chunk, n, D]``, are the largest object).
    """
    diffs = (pos - neg).transpose(0, 1)  # [L, n, D]
    out = torch.empty(diffs.shape[0], diffs.shape[2], dtype=torch.float32, device=diffs.device)
    for lo in range(0, diffs.shape[0], layer_chunk):
        chunk = diffs[lo : lo + layer_chunk].float()
        scale = feature_scale(chunk)  # [chunk, D]
        w = logistic_standardised(chunk / scale[:, None, :], c=c, max_iter=max_iter)  # [chunk, D]
        out[lo : lo + layer_chunk] = w / scale
    return out


def estimator(method: str, c: float = DEFAULT_C) -> Estimator:
    """The estimator for a method name."""
    if method == "logistic":
        return lambda pos, neg: logistic(pos, neg, c=c)
    if method == "mean_diff":
        return mean_diff
    if method == "pca":
        return pca
    raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
