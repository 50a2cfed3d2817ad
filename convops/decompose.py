"""Low-rank conversion of a dense conv kernel into a spatially separable pair (a kh x 1 conv
then a 1 x kw conv), Jaderberg et al. 2014 "scheme 2" with the SVD of Tai et al. 2016.

The factorisation. A dense weight W (Cout, Cin, kh, kw) computes

    y[o, i, j] = sum_{c,p,q} W[o, c, p, q] x[c, i*sh - ph + p*dh, j*sw - pw + q*dw].

The separable pair (weight_v V (R, Cin, kh, 1), weight_h H (Cout, R, 1, kw)) computes
mid[m, i, j'] = sum_{c,p} V[m, c, p] x[c, i*sh - ph + p*dh, j'] and then
y[o, i, j] = sum_{m,q} H[o, m, q] mid[m, j*sw - pw + q*dw], where the width padding of mid is
zero exactly where x's is (mid's columns are x's columns). Substituting, the pair equals the
dense conv with

    W[o, c, p, q] = sum_m V[m, c, p] H[o, m, q],   i.e.   A = V^T H

for the matrix A[(c, p), (o, q)] = W[o, c, p, q] of size (Cin*kh) x (Cout*kw). The best rank-R
such product in the Frobenius norm is the truncated SVD A ~ U_R S_R Vh_R (Eckart-Young); the
singular values are split symmetrically, V = sqrt(S_R) U_R^T and H = sqrt(S_R) Vh_R. At
R = min(Cin*kh, Cout*kw) ("full rank") the pair is exact. The relative reconstruction error is
||W - W_R||_F / ||W||_F = sqrt(sum of the dropped S^2 / sum of all S^2).

Groups: a grouped conv is `groups` independent convs, so each group's block of W is factorised
on its own; `rank` is the number of intermediate channels *per group* (the pair has
rank * groups intermediate channels, and the grouped composition reproduces the grouped conv).

API: `spatially_separable(weight, rank=None, groups=1) -> (weight_v, weight_h)`;
`reconstruction_error(weight, rank=None, groups=1) -> float`; `decompose(...)` returns both at
once (a `SeparableDecomposition` named tuple, one SVD); `reconstruction_errors(weight, groups)`
gives the error at every rank; `compose(weight_v, weight_h, groups)` multiplies a pair back
into a dense weight. The SVD runs in float64 on the weight's device; the factors come back in
the weight's dtype and device.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["SeparableDecomposition", "compose", "decompose", "full_rank", "reconstruction_error",
           "reconstruction_errors", "spatially_separable"]


class SeparableDecomposition(NamedTuple):
    weight_v: Tensor   # (rank * groups, Cin/groups, kh, 1)
    weight_h: Tensor   # (Cout, rank, 1, kw)
    rank: int          # intermediate channels per group
    error: float       # ||W - compose(weight_v, weight_h)||_F / ||W||_F


def _check_weight(weight: Tensor, groups: int):
    if weight.dim() != 4:
        raise ValueError(f"expected a 4-dimensional conv2d weight (Cout, Cin/groups, kh, kw), but got weight "
                         f"of size {list(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0 or weight.shape[0] % groups:
        raise ValueError(f"expected groups to be a positive int dividing the weight's dimension 0, but got "
                         f"groups={groups} for weight of size {list(weight.shape)}")


def full_rank(weight: Tensor, groups: int = 1) -> int:
    """The rank at which the separable pair is exact: min(Cin/groups * kh, Cout/groups * kw)."""
    _check_weight(weight, groups)
    cout, cin_g, kh, kw = weight.shape
    return min(cin_g * kh, cout // groups * kw)


def _check_rank(rank, weight: Tensor, groups: int) -> int:
    full = full_rank(weight, groups)
    if rank is None:
        return full
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"rank must be an int in [1, {full}] (the full rank min(Cin/groups*kh, Cout/groups*kw) "
                         f"of weight of size {list(weight.shape)} with groups={groups}), but got rank={rank!r}")
    return rank


def _group_matrices(weight: Tensor, groups: int) -> Tensor:
    """(groups, Cin/g * kh, Cout/g * kw): A_g[(c, p), (o, q)] = W[g*Cout/g + o, c, p, q]."""
    cout, cin_g, kh, kw = weight.shape
    w = weight.detach().to(torch.float64).reshape(groups, cout // groups, cin_g, kh, kw)
    return w.permute(0, 2, 3, 1, 4).reshape(groups, cin_g * kh, cout // groups * kw)


def _errors_from_singular_values(s: Tensor) -> Tensor:
    """Relative error at ranks 1..full from the (groups, full) singular values."""
    energy = s.square().sum(0)                          # per rank index, summed over groups
    total = energy.sum()
    if total == 0:
        return torch.zeros_like(energy)
    # energy beyond rank r (r = 1..full), summed from the tail: exactly 0 at full rank
    beyond = torch.cat([energy.flip(0).cumsum(0).flip(0)[1:], energy.new_zeros(1)])
    return (beyond / total).sqrt()


def reconstruction_errors(weight: Tensor, groups: int = 1) -> Tensor:
    """Relative Frobenius error at every rank: entry r-1 is the error at rank r (1 <= r <= full);
    non-increasing, 0 (to rounding) at full rank."""
    _check_weight(weight, groups)
    return _errors_from_singular_values(torch.linalg.svdvals(_group_matrices(weight, groups)))


def decompose(weight: Tensor, rank: Optional[int] = None, groups: int = 1) -> SeparableDecomposition:
    """The rank-`rank` separable pair of `weight` and its relative reconstruction error (one SVD).
    rank=None is the full rank (exact)."""
    _check_weight(weight, groups)
    rank = _check_rank(rank, weight, groups)
    cout, cin_g, kh, kw = weight.shape
    u, s, vh = torch.linalg.svd(_group_matrices(weight, groups), full_matrices=False)
    root = s[:, :rank].sqrt()                                           # (g, R)
    # V[m, (c, p)] = sqrt(s_m) U[(c, p), m];  H[m, (o, q)] = sqrt(s_m) Vh[m, (o, q)]
    v = (u[:, :, :rank] * root.unsqueeze(1)).transpose(1, 2)           # (g, R, Cin/g*kh)
    h = vh[:, :rank, :] * root.unsqueeze(2)                             # (g, R, Cout/g*kw)
    weight_v = v.reshape(groups * rank, cin_g, kh, 1)
    weight_h = (h.reshape(groups, rank, cout // groups, kw).permute(0, 2, 1, 3)
                .reshape(cout, rank, 1, kw))
    error = _errors_from_singular_values(s)[rank - 1].item()
    like = dict(dtype=weight.dtype, device=weight.device)
    return SeparableDecomposition(weight_v.to(**like).contiguous(), weight_h.to(**like).contiguous(), rank,
                                  error)


def spatially_separable(weight: Tensor, rank: Optional[int] = None, groups: int = 1) -> Tuple[Tensor, Tensor]:
    """(weight_v (rank*groups, Cin/groups, kh, 1), weight_h (Cout, rank, 1, kw)) such that
    `functional.spatially_separable_conv2d(x, weight_v, weight_h, b, s, p, d, groups)` approximates
    `conv2d(x, weight, b, s, p, d, groups)`, exactly at rank None/full. Raises ValueError for a
    rank outside [1, full]."""
    d = decompose(weight, rank, groups)
    return d.weight_v, d.weight_h


def reconstruction_error(weight: Tensor, rank: Optional[int] = None, groups: int = 1) -> float:
    """||W - W_rank||_F / ||W||_F for the rank-`rank` separable pair of `weight`."""
    rank = _check_rank(rank, weight, groups)
    return reconstruction_errors(weight, groups)[rank - 1].item()


def compose(weight_v: Tensor, weight_h: Tensor, groups: int = 1) -> Tensor:
    """The dense (Cout, Cin/groups, kh, kw) weight of a separable pair:
    W[o, c, p, q] = sum_m weight_v[m, c, p, 0] * weight_h[o, m, 0, q], within each group."""
    cmid, cin_g, kh, _ = weight_v.shape
    cout, r, _, kw = weight_h.shape
    v = weight_v.reshape(groups, cmid // groups, cin_g, kh)
    h = weight_h.reshape(groups, cout // groups, r, kw)
    return torch.einsum("gmcp,gomq->gocpq", v, h).reshape(cout, cin_g, kh, kw)
