"""Figure 1: the loss of a two-layer ReLU net with square loss along random directions.

The net is h = W₂ relu(W₁ x) (no biases) with E = (1/N) Σ_n ½‖h_n − y_n‖² on random data.
Three panels, as in the paper:

(a) W₁(s, t) = sU + tV for two random direction matrices U, V (W₂ fixed);
(b) W₂ varied along two random directions inside W₂ (W₁ fixed): W₂ = W₂⁰ + sU + tV;
(c) W₁ = sU and W₂ = tV jointly.

Section 2.2.3 / App. E: with piecewise linear transfer functions and a PSD H_L every diagonal
Hessian block is PSD, so trace(H) ≥ 0 and there are no differentiable strict local maxima;
maxima can only sit on the non-differentiable ridges. Besides the surfaces, :func:`run_surface`
therefore reports (i) the discrete strict local maxima in the interior of each grid and
(ii) the smallest eigenvalue of the exact diagonal Hessian blocks (``gnopt.hessian_blocks``)
and the trace of the block-diagonal Hessian at random parameter points (≥ 0 up to rounding).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, TextIO, Union

import torch
from torch import Tensor, nn

from ..curvature import hessian_blocks
from .metrics import optional_plot, write_json_atomic

__all__ = ["SurfaceConfig", "run_surface", "surface_grids", "interior_local_maxima"]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class SurfaceConfig:
    inputs: int = 10
    hidden: int = 20
    outputs: int = 5
    n: int = 100
    extent: float = 3.0
    resolution: int = 61
    seed: int = 0
    hessian_points: int = 10

    def __post_init__(self) -> None:
        if min(self.inputs, self.hidden, self.outputs, self.n, self.resolution) < 1 or self.extent <= 0:
            raise ValueError("sizes, resolution and extent must be positive")


def _loss(W1: Tensor, W2: Tensor, X: Tensor, Y: Tensor) -> Tensor:
    """E for batched weights: W1 (..., H, D), W2 (..., K, H) → (...)."""
    a = torch.relu(torch.einsum("...hd,nd->...nh", W1, X))
    h = torch.einsum("...kh,...nh->...nk", W2, a)
    return 0.5 * ((h - Y) ** 2).sum(-1).mean(-1)


def surface_grids(cfg: SurfaceConfig) -> Dict[str, Any]:
    """``{"s": (R,), "t": (R,), "a"|"b"|"c": (R, R) loss grids indexed [t, s]}`` (float64)."""
    g = torch.Generator().manual_seed(cfg.seed)
    D, H, K = cfg.inputs, cfg.hidden, cfg.outputs
    dt = torch.float64
    X = torch.randn(cfg.n, D, generator=g, dtype=dt)
    Y = torch.randn(cfg.n, K, generator=g, dtype=dt)
    W1 = torch.randn(H, D, generator=g, dtype=dt) / D ** 0.5
    W2 = torch.randn(K, H, generator=g, dtype=dt) / H ** 0.5
    U1, V1 = (torch.randn(H, D, generator=g, dtype=dt) / D ** 0.5 for _ in range(2))
    U2, V2 = (torch.randn(K, H, generator=g, dtype=dt) / H ** 0.5 for _ in range(2))
    s = torch.linspace(-cfg.extent, cfg.extent, cfg.resolution, dtype=dt)
    S, T = torch.meshgrid(s, s, indexing="xy")  # S[i, j] = s[j], T[i, j] = s[i]
    Sx, Tx = S[..., None, None], T[..., None, None]
    out: Dict[str, Any] = {"s": s, "t": s}
    out["a"] = _loss(Sx * U1 + Tx * V1, W2.expand(*S.shape, K, H), X, Y)
    out["b"] = _loss(W1.expand(*S.shape, H, D), W2 + Sx * U2 + Tx * V2, X, Y)
    out["c"] = _loss(Sx * U1, Tx * U2, X, Y)
    out["data"] = (X, Y, W1, W2)
    return out


def interior_local_maxima(Z: Tensor) -> int:
    """Number of interior grid points strictly greater than all 8 neighbours."""
    c = Z[1:-1, 1:-1]
    nb = [Z[1 + di:Z.shape[0] - 1 + di, 1 + dj:Z.shape[1] - 1 + dj]
          for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
    return int(torch.stack([c > m for m in nb]).all(0).sum())


def _hessian_check(cfg: SurfaceConfig, X: Tensor, Y: Tensor) -> Dict[str, float]:
    """min eigenvalue of the diagonal Hessian blocks and min trace over random points."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    min_eig, min_trace = float("inf"), float("inf")
    for _ in range(cfg.hessian_points):
        net = nn.Sequential(nn.Linear(cfg.inputs, cfg.hidden, bias=False, dtype=torch.float64), nn.ReLU(),
                            nn.Linear(cfg.hidden, cfg.outputs, bias=False, dtype=torch.float64))
        with torch.no_grad():
            for lin in (net[0], net[2]):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64) * 2
                                 / lin.weight.shape[1] ** 0.5)
        blocks = hessian_blocks(net, X, Y, "mse")
        for B in blocks:
            min_eig = min(min_eig, float(torch.linalg.eigvalsh(0.5 * (B + B.T)).min()))
        min_trace = min(min_trace, float(sum(torch.trace(B) for B in blocks)))
    return {"min_block_eigenvalue": min_eig, "min_trace": min_trace}


def run_surface(cfg: SurfaceConfig, out_dir: Optional[PathLike] = None, *, stream: Optional[TextIO] = None,
                plot: bool = True) -> Dict[str, Any]:
    """Compute the three surfaces and the checks; write ``surface.json``/``.npz``/``.png``."""
    stream = sys.stderr if stream is None else stream
    grids = surface_grids(cfg)
    X, Y, _, _ = grids.pop("data")
    maxima = {k: interior_local_maxima(grids[k]) for k in ("a", "b", "c")}
    checks = _hessian_check(cfg, X, Y) if cfg.hessian_points else {}
    result = {"config": dataclasses.asdict(cfg), "interior_local_maxima": maxima, **checks,
              "s": grids["s"], "t": grids["t"], "a": grids["a"], "b": grids["b"], "c": grids["c"]}
    stream.write(f"strict interior local maxima on the grids: {maxima}; "
                 + (f"min eigenvalue of diagonal Hessian blocks {checks['min_block_eigenvalue']:.3g}, "
                    f"min trace {checks['min_trace']:.3g}\n" if checks else "\n"))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "surface.json", {k: v for k, v in result.items() if k not in ("a", "b", "c", "s", "t")})
        import numpy as np

        np.savez(out_dir / "surface.npz", **{k: result[k].numpy() for k in ("s", "t", "a", "b", "c")})
        if plot:
            optional_plot("plot_surface", result, out_dir / "surface.png", stream=stream)
    return result
