"""Full-data-set metrics, evaluated in chunks to bound memory.

* ``objective``: the mean per-example loss of the optimised objective (the loss convention
  of :mod:`gnopt.losses`: summed over outputs, averaged over examples), without the
  weight-decay term (``l2`` reports ½η‖θ‖² separately, so ``objective + l2`` is the
  regularised objective that HF/K-FAC logs print).
* ``sq_error`` (autoencoders): the squared reconstruction error per image, Σ_pixels
  (sigmoid(h) − x)² for BCE nets and Σ_pixels (h − x)² for squared-error (FACES) nets,
  averaged over images — the "error" that the published HF/K-FAC runs report
  (REPRODUCTION.md, section 3).
* ``error_rate`` (the odd/even mixture classifier): the fraction of examples whose
  predictive probability p(y=1|x) of eq. 27 is on the wrong side of ½.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from ..losses import get_loss

__all__ = ["evaluate", "l2_term"]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss: str, chunk: int = 5000) -> Dict[str, float]:
    """``{"objective", "sq_error" | "error_rate"}`` of ``model`` on all of (x, y)."""
    lossfn = get_loss(loss)
    n = int(x.shape[0])
    tot_loss = torch.zeros((), dtype=torch.float64)
    tot_sq = torch.zeros((), dtype=torch.float64)
    wrong = 0
    for lo in range(0, n, chunk):
        xb, yb = x[lo:lo + chunk], y[lo:lo + chunk]
        h = model(xb)
        tot_loss += lossfn.per_example(h, yb).to(torch.float64).sum()
        if loss == "bce":
            tot_sq += ((torch.sigmoid(h) - yb) ** 2).to(torch.float64).sum()
        elif loss == "mse":
            tot_sq += ((h - yb) ** 2).to(torch.float64).sum()
        elif loss == "mixture":
            s = torch.sigmoid(h)
            p1 = s[:, 0] * s[:, 1] + (1 - s[:, 0]) * s[:, 2]
            wrong += int(((p1 > 0.5).to(yb.dtype) != yb).sum())
        elif loss == "ce":
            wrong += int((h.argmax(1) != yb).sum())
    out = {"objective": float(tot_loss / n)}
    if loss in ("bce", "mse"):
        out["sq_error"] = float(tot_sq / n)
    else:
        out["error_rate"] = wrong / n
    return out


@torch.no_grad()
def l2_term(model: nn.Module, weight_decay: float) -> float:
    """½η‖θ‖² over all parameters (biases included, as in the optimisers)."""
    if not weight_decay:
        return 0.0
    sq = sum(float((p.detach().to(torch.float64) ** 2).sum()) for p in model.parameters())
    return 0.5 * weight_decay * sq
