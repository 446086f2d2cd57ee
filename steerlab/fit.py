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


def _warm_start(margin_dir: torch.Tensor, sq_norm: torch.Tensor, c: float, steps: int = 30) -> torch.Tensor:
    """Best multiple t of the mean standardised difference w = t * mean(z): 1-D Newton per batch row.

    ``margin_dir`` ``[B, n]`` is Z mean(z) (each sample's margin per unit t) and ``sq_norm`` ``[B]``
    is |mean(z)|^2. Starting Newton there skips the damped phase in which the weights grow from 0.
    """
    t = torch.zeros_like(sq_norm)
    for _ in range(steps):
        margins = t[:, None] * margin_dir
        grad = t * sq_norm - 2 * c * (torch.sigmoid(-margins) * margin_dir).sum(-1)
        hess = sq_norm + 2 * c * (torch.sigmoid(margins) * torch.sigmoid(-margins) * margin_dir**2).sum(-1)
        t = t - grad / hess.clamp_min(1e-30)
    return t


def logistic_dual(gram: torch.Tensor, c: float = DEFAULT_C, max_iter: int = 100, tol: float = 1e-10) -> torch.Tensor:
    """Dual coefficients ``a`` ``[B, n]`` (w = Z^T a) for each Gram matrix K = Z Z^T ``[B, n, n]``.

    The gradient in ``a`` is K r with r = a - 2C sigmoid(-K a) and the Hessian is
    K (I + 2C W K) with W = diag(p (1 - p)), so (I + 2C W K)^-1 r is a Newton step: one n x n
    solve per layer (batched LU: on CPU faster for these sizes than Cholesky on the symmetrised
    system). For n << d_model.
    """
    gram = gram.double()

    def objective(alpha: torch.Tensor) -> torch.Tensor:
        margins = torch.einsum("bij,bj->bi", gram, alpha)
        return 0.5 * (alpha * margins).sum(-1) + 2 * c * torch.nn.functional.softplus(-margins).sum(-1)

    def newton_step(alpha: torch.Tensor) -> torch.Tensor:
        margins = torch.einsum("bij,bj->bi", gram, alpha)
        p = torch.sigmoid(margins)
        residual = alpha - 2 * c * torch.sigmoid(-margins)
        system = gram * (2 * c * p * (1 - p))[:, :, None]  # I + 2C W K, built in place
        system.diagonal(dim1=-2, dim2=-1).add_(1.0)
        return torch.linalg.solve(system, residual.unsqueeze(-1)).squeeze(-1)

    n = gram.shape[-1]
    margin_dir = gram.sum(-1) / n  # K (1/n): margins of w = mean(z)
    alpha = _warm_start(margin_dir, margin_dir.sum(-1) / n, c)[:, None].expand(-1, n) / n
    return _damped_newton(alpha.contiguous(), objective, newton_step, max_iter, tol)


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

    mean = z.mean(1)  # [B, d]
    w = _warm_start(torch.einsum("bnd,bd->bn", z, mean), (mean * mean).sum(-1), c)[:, None] * mean
    return _damped_newton(w, objective, newton_step, max_iter, tol)


def layer_chunk(per_layer_bytes: int, budget_bytes: int = 1 << 30) -> int:
    """How many layers to process at once so the largest temporaries stay within ``budget_bytes``."""
    return max(1, budget_bytes // max(1, per_layer_bytes))


def logistic_weights(x: torch.Tensor, inv_sq: torch.Tensor, c: float = DEFAULT_C, max_iter: int = 100) -> torch.Tensor:
    """Directions in activation coordinates from raw paired differences ``x`` ``[..., n, D]`` and
    the inverse squared feature scales ``inv_sq`` ``[..., D]`` (standardisation is z = x / s).

    In the dual, K = z z^T = (x / s^2) x^T and v = (z^T a) / s = (x^T a) / s^2, so z itself is
    never formed; in the primal, v = w / s.
    """
    batch = x.shape[:-2]
    n, d = x.shape[-2:]
    if n <= d:
        gram = (x * inv_sq[..., None, :]) @ x.transpose(-1, -2)  # [..., n, n]
        alpha = logistic_dual(gram.reshape(-1, n, n), c=c, max_iter=max_iter).reshape(*batch, n).to(x.dtype)
        return torch.einsum("...n,...nd->...d", alpha, x) * inv_sq
    inv = inv_sq.sqrt()
    z = (x * inv[..., None, :]).reshape(-1, n, d)
    return logistic_primal(z, c=c, max_iter=max_iter).to(x.dtype).reshape(*batch, d) * inv


def logistic(
    pos: torch.Tensor, neg: torch.Tensor, c: float = DEFAULT_C, budget_bytes: int = 1 << 30, max_iter: int = 100
) -> torch.Tensor:
    """Paired logistic-regression directions ``[L, D]`` in activation coordinates.

    Layers are processed in chunks whose temporaries (a few ``[chunk, n, D]``) stay within
    ``budget_bytes``.
    """
    diffs = (pos - neg).transpose(0, 1).float()  # [L, n, D]
    n_layers, n, d = diffs.shape
    out = torch.empty(n_layers, d, dtype=torch.float32, device=diffs.device)
    step = layer_chunk(3 * n * d * 4, budget_bytes)
    for lo in range(0, n_layers, step):
        chunk = diffs[lo : lo + step]
        out[lo : lo + step] = logistic_weights(chunk, feature_scale(chunk).pow(-2), c=c, max_iter=max_iter)
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
