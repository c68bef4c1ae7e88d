"""The rank of the empirical curvature (section 6, App. D).

For a minibatch of N examples, the mini-batch GN matrix Ḡ = (1/N) Σ_n J_nᵀ H_L,n J_n has
rank ≤ Σ_n rank(H_L,n) ≤ rank(H_L)·N (eq. 63–64), and so has each layer's block and each
layer's exact pre-activation factor E[𝒢_λ] (what KFLR computes). KFAC's Monte Carlo factor,
built from S sampled gradients per example, has rank ≤ S·N. (KFRA's recursive factor
obeys no such bound: the elementwise product with the averaged f'f'ᵀ can raise the rank.)

:func:`run_rank` measures the numerical ranks (eigenvalues above ``rtol`` × the largest,
``rtol`` = size × machine epsilon by default, in float64) for several batch sizes N on a
small net — dense GN by ``gnopt.gauss_newton_matrix`` — and reports the bounds.
The images can be average-pooled (``pool``) to keep the dense GN small: CURVES pooled by 4
gives 7×7 inputs.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO, Tuple, Union

import torch
from torch import Tensor

from ..curvature import expected_preactivation_gn, gauss_newton_blocks, gauss_newton_matrix, kronecker_factors
from ..losses import get_loss
from ..models import linear_layers
from .config import TrainConfig
from .metrics import optional_plot, write_json_atomic
from .runner import build_model, load_data

__all__ = ["RankConfig", "run_rank", "numerical_rank", "pool_images"]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class RankConfig:
    """Defaults: CURVES pooled to 7×7, autoencoder 49-16-8-4-8-16-49 (1,989 parameters),
    batch sizes 1…64; runs in a few seconds."""

    dataset: str = "curves"
    pool: int = 4
    widths: Optional[Tuple[int, ...]] = (16, 8, 4)
    activation: str = "sigmoid"
    code_linear: Optional[bool] = None
    init: str = "glorot"
    batch_sizes: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    samples: int = 1
    seed: int = 0
    rtol: Optional[float] = None
    data_dir: Optional[str] = None
    blocks: bool = True

    def __post_init__(self) -> None:
        if self.pool < 1 or self.samples < 1 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("pool, samples and batch sizes must be >= 1")


def pool_images(x: Tensor, factor: int) -> Tensor:
    """Average-pool square images stored as rows (N, s²) by ``factor`` (s divisible or cropped)."""
    if factor == 1:
        return x
    n, d = x.shape
    s = int(round(d ** 0.5))
    if s * s != d:
        raise ValueError(f"pooling needs square images; inputs have {d} features")
    m = s // factor
    if m < 1:
        raise ValueError(f"cannot pool {s}x{s} images by {factor}")
    img = x.reshape(n, 1, s, s)[:, :, :m * factor, :m * factor]
    return torch.nn.functional.avg_pool2d(img, factor).reshape(n, m * m)


def numerical_rank(M: Tensor, rtol: Optional[float] = None) -> int:
    """Number of eigenvalues of the symmetric PSD ``M`` above ``rtol · max|λ|``."""
    M = 0.5 * (M + M.T)
    ev = torch.linalg.eigvalsh(M.to(torch.float64))
    top = float(ev.abs().max()) if ev.numel() else 0.0
    if top == 0.0:
        return 0
    tol = (M.shape[0] * torch.finfo(torch.float64).eps if rtol is None else rtol) * top
    return int((ev > tol).sum())


def run_rank(cfg: RankConfig, out_dir: Optional[PathLike] = None, *, stream: Optional[TextIO] = None,
             plot: bool = True) -> Dict[str, Any]:
    """Ranks for every batch size; writes ``rank.json`` and ``rank.png`` if ``out_dir``."""
    stream = sys.stderr if stream is None else stream
    tcfg = TrainConfig(dataset=cfg.dataset, optimizer="kfra", steps=0, widths=cfg.widths, activation=cfg.activation,
                       code_linear=cfg.code_linear, init=cfg.init, seed=cfg.seed, dtype="float64",
                       limit=max(cfg.batch_sizes), data_dir=cfg.data_dir)
    data = load_data(tcfg)
    x = pool_images(data.x, cfg.pool) if cfg.pool > 1 else data.x
    y = x if data.y is data.x else data.y
    model = build_model(tcfg, int(x.shape[1]))
    lossfn = get_loss(data.loss)
    n_params = sum(p.numel() for p in model.parameters())
    widths_out = [m.out_features for m in linear_layers(model)]
    rows: List[Dict[str, Any]] = []
    gen = torch.Generator().manual_seed(cfg.seed)
    for n in cfg.batch_sizes:
        xb, yb = x[:n], y[:n]
        with torch.no_grad():
            h = model(xb)
        hl = lossfn.psd_hessian(h, yb)
        r_hl = [numerical_rank(hl[i], cfg.rtol) for i in range(n)]
        rank_hl = max(r_hl)
        gn = gauss_newton_matrix(model, xb, yb, data.loss)
        row: Dict[str, Any] = {
            "N": n, "params": n_params, "rank_HL": rank_hl, "sum_rank_HL": sum(r_hl),
            "rank_gn": numerical_rank(gn, cfg.rtol), "bound_gn": min(n_params, rank_hl * n),
        }
        if cfg.blocks:
            row["rank_blocks"] = [numerical_rank(B, cfg.rtol) for B in gauss_newton_blocks(model, xb, yb, data.loss)]
        eg = expected_preactivation_gn(model, xb, yb, data.loss)
        row["rank_kflr_G"] = [numerical_rank(G, cfg.rtol) for G in eg]
        row["bound_kflr_G"] = [min(d, rank_hl * n) for d in widths_out]
        kfac = kronecker_factors(model, xb, yb, data.loss, "kfac", samples=cfg.samples, generator=gen)
        row["rank_kfac_G"] = [numerical_rank(f.G, cfg.rtol) for f in kfac]
        row["bound_kfac_G"] = [min(d, cfg.samples * n) for d in widths_out]
        kfra = kronecker_factors(model, xb, yb, data.loss, "kfra")
        row["rank_kfra_G"] = [numerical_rank(f.G, cfg.rtol) for f in kfra]
        row["layer_widths"] = widths_out
        rows.append(row)
        stream.write(f"N={n}: rank(GN) = {row['rank_gn']} (bound {row['bound_gn']} of {n_params}); "
                     f"KFLR G {row['rank_kflr_G']}; KFAC G {row['rank_kfac_G']}\n")
    result = {"config": dataclasses.asdict(cfg), "input_dim": int(x.shape[1]), "loss": data.loss, "rows": rows}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "rank.json", result)
        if plot:
            optional_plot("plot_rank", result, out_dir / "rank.png", stream=stream)
    return result
