"""Alignment of the approximate updates with exact Gauss-Newton updates (App. F.2, Figs. 5–7).

Along a KFRA* trajectory (KFRA with the factored approximate inversion, eq. 36), every
``every`` updates and on the minibatch about to be used, we compute

* the approximate directions δ̃ = −(G̃ + kI)⁻¹g of each method in ``methods`` ("kfra*",
  "kfra", "kfac*", "kfac", also "kflr"/"kflr*"; "*" = factored damping, eq. 36–38,
  none = exact inversion by eigendecompositions), all with the trajectory's current
  k = γ + η, from the current minibatch only (no curvature moving average);
* the block-diagonal GN direction: per layer, (Ḡ_λλ + kI) d_λ = −g_λ solved by conjugate
  gradients with GN-vector products (R-operator) restricted to that layer;
* the full GN direction: (Ḡ + kI) d = −g by conjugate gradients over all layers
  (Martens, 2010);

and log the cosine similarity of every method's per-layer update with the block GN update
(Fig. 5a), of its whole update vector with the full GN update (Fig. 5b), and of the block GN
update with the full one. g includes the weight-decay term ηθ, as in the optimisers.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple, Union

import torch
from torch import Tensor

from ..curvature.common import prepare
from ..gvp import gvp_from_trace
from ..layers import parse_model
from ..linalg import conjugate_gradient
from ..losses import get_loss
from ..params import layer_matrix, stage_params
from .config import TrainConfig
from .metrics import MetricsWriter, optional_plot, write_json_atomic
from .runner import build_model, load_data
from .sampler import BatchSampler

__all__ = ["AlignConfig", "run_alignment", "cosine", "layer_gradients", "exact_gn_directions", "METHOD_NAMES"]

METHOD_NAMES = ("kfra*", "kfra", "kfac*", "kfac", "kflr*", "kflr")
PathLike = Union[str, Path]


@dataclass(frozen=True)
class AlignConfig:
    """The alignment experiment. Defaults: a small CURVES net (784-64-32-16-8-16-32-64-784),
    batch size 500 and 5 measurements, about a minute on two idle CPU cores (the paper uses the
    full nets with batch size 1000 and reports that 250, 500 and 1000 give similar results)."""

    dataset: str = "curves"
    limit: Optional[int] = 5000
    widths: Optional[Tuple[int, ...]] = (64, 32, 16, 8)
    activation: str = "sigmoid"
    code_linear: Optional[bool] = None
    init: str = "sparse"
    batch_size: int = 500
    steps: int = 40
    every: int = 10
    seed: int = 0
    weight_decay: float = 1e-5
    curvature_ema: float = 0.0
    methods: Tuple[str, ...] = ("kfra*", "kfra", "kfac*", "kfac")
    cg_tol: float = 1e-6
    cg_max_iter: int = 300
    dtype: str = "float64"
    data_dir: Optional[str] = None

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHOD_NAMES]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {METHOD_NAMES}")
        if self.every < 1 or self.steps < 0:
            raise ValueError("every must be >= 1 and steps >= 0")

    def train_config(self) -> TrainConfig:
        return TrainConfig(dataset=self.dataset, optimizer="kfra", steps=self.steps, batch_size=self.batch_size,
                           seed=self.seed, weight_decay=self.weight_decay, curvature_ema=self.curvature_ema,
                           damping="factored", widths=self.widths, activation=self.activation,
                           code_linear=self.code_linear, init=self.init, dtype=self.dtype, limit=self.limit,
                           data_dir=self.data_dir)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Cosine similarity of two lists of tensors seen as one vector (NaN if one is zero)."""
    na, nb = _dot(a, a) ** 0.5, _dot(b, b) ** 0.5
    if na == 0 or nb == 0:
        return float("nan")
    return _dot(a, b) / (na * nb)


def layer_gradients(model: torch.nn.Module, x: Tensor, y: Tensor, loss: str, weight_decay: float = 0.0) -> List[Tensor]:
    """∇f + ηθ per layer as ``[W | b]`` matrices (the optimisers' gradient)."""
    net = parse_model(model)
    lossfn = get_loss(loss)
    params = [p for st in net.stages for p in stage_params(st)]
    with torch.enable_grad():
        f = lossfn(model(x), y)
        gs = torch.autograd.grad(f, params)
    out, i = [], 0
    for st in net.stages:
        n = 2 if st.has_bias else 1
        g = layer_matrix(st, *gs[i:i + n]) if st.has_bias else gs[i]
        i += n
        out.append((g + weight_decay * layer_matrix(st).detach()).detach())
    return out


def exact_gn_directions(model: torch.nn.Module, x: Tensor, y: Tensor, loss: str, grads: Sequence[Tensor], k: float,
                        tol: float = 1e-6, max_iter: int = 300) -> Tuple[List[Tensor], List[Tensor], Dict[str, Any]]:
    """(block GN direction, full GN direction, CG statistics) for −g with damping ``k``."""
    net, lossfn, trace = prepare(model, x, y, loss)
    rhs = [-g for g in grads]

    def full_mv(v: List[Tensor]) -> List[Tensor]:
        gv = gvp_from_trace(net, trace, y, lossfn, v)
        return [a + k * b for a, b in zip(gv, v)]

    with torch.no_grad():
        full, info = conjugate_gradient(full_mv, rhs, tol=tol, max_iter=max_iter)
        block, iters, conv = [], [], []
        for lam in range(len(rhs)):
            zeros = [torch.zeros_like(r) for r in rhs]

            def mv(v: Tensor, lam: int = lam) -> Tensor:
                vecs = list(zeros)
                vecs[lam] = v
                return gvp_from_trace(net, trace, y, lossfn, vecs)[lam] + k * v

            d, binfo = conjugate_gradient(mv, rhs[lam], tol=tol, max_iter=max_iter)
            block.append(d)
            iters.append(int(binfo.iterations))
            conv.append(bool(binfo.converged))
    stats = {"cg_iters_full": int(info.iterations), "cg_converged_full": bool(info.converged),
             "cg_iters_block": iters, "cg_converged_block": conv}
    return block, list(full), stats


def _make_methods(cfg: AlignConfig, model: torch.nn.Module, loss: str) -> Dict[str, Any]:
    from .. import GaussNewton

    out = {}
    for m in cfg.methods:
        curv = m.rstrip("*")
        damping = "factored" if m.endswith("*") else "eigen"
        out[m] = GaussNewton(model, loss, curv, damping=damping, weight_decay=cfg.weight_decay, seed=cfg.seed)
    return out


def run_alignment(cfg: AlignConfig, out_dir: PathLike, *, stream: Optional[TextIO] = None, plot: bool = True,
                  progress: bool = True) -> List[Dict[str, Any]]:
    """Run the experiment; write ``alignment.jsonl``, ``alignment_config.json`` and
    ``alignment.png`` into ``out_dir``; return the records."""
    from .. import GaussNewton

    stream = sys.stderr if stream is None else stream
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "alignment_config.json", dataclasses.asdict(cfg))
    tcfg = cfg.train_config()
    data = load_data(tcfg)
    model = build_model(tcfg, data.input_dim)
    traj = GaussNewton(model, data.loss, "kfra", damping="factored", weight_decay=cfg.weight_decay,
                       curvature_ema=cfg.curvature_ema, seed=cfg.seed)
    others = _make_methods(cfg, model, data.loss)
    sampler = BatchSampler(int(data.x.shape[0]), cfg.batch_size, cfg.seed)
    records: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    with MetricsWriter(out_dir / "alignment.jsonl", "w") as writer:
        for step in range(cfg.steps + 1):
            idx = sampler.next()
            x, y = data.x[idx], data.y[idx]
            if step % cfg.every == 0:
                k = traj.gamma + cfg.weight_decay
                grads = layer_gradients(model, x, y, data.loss, cfg.weight_decay)
                block, full, stats = exact_gn_directions(model, x, y, data.loss, grads, k, cfg.cg_tol, cfg.cg_max_iter)
                rec: Dict[str, Any] = {"step": step, "gamma": traj.gamma, "k": k, **stats,
                                       "cos_block_full": cosine(block, full), "cos_layer": {}, "cos_full": {}}
                for name, opt in others.items():
                    opt.gamma = traj.gamma
                    d = opt.direction(x, y)
                    rec["cos_layer"][name] = [cosine([a], [b]) for a, b in zip(d, block)]
                    rec["cos_full"][name] = cosine(d, full)
                rec["time_s"] = time.perf_counter() - t0
                writer.write(rec)
                records.append(rec)
                if progress:
                    summary = " ".join(f"{n} {v:.3f}" for n, v in rec["cos_full"].items())
                    stream.write(f"step {step}: cos with full GN: {summary}; block {rec['cos_block_full']:.3f}\n")
                    stream.flush()
            if step < cfg.steps:
                traj.step(x, y)
    if plot:
        optional_plot("plot_alignment", records, out_dir / "alignment.png",
                      title=f"{cfg.dataset}: alignment along a KFRA* trajectory", stream=stream)
    return records
