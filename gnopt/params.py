"""Per-layer parameter matrices V = [W | b] and the flat vector θ in the project's order.

Convention (DESIGN.md): layer λ's parameters are V_λ = [W_λ | b_λ] (d_out, d_in+1), bias as
the last column (or just W_λ without bias), flattened row-major; θ concatenates the
layers in forward order. In this order a layer's Kronecker block is ``kron(G, Q)``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor

from .layers import Network, Stage


def layer_matrix(st: Stage, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """V = [W | b] for a stage: (d_out, d_in + has_bias). Uses the module's tensors by default."""
    W = st.linear.weight if weight is None else weight
    if not st.has_bias:
        return W
    b = st.linear.bias if bias is None else bias
    return torch.cat([W, b.unsqueeze(1)], dim=1)  # type: ignore[union-attr]


def split_matrix(st: Stage, V: Tensor) -> List[Tensor]:
    """Inverse of :func:`layer_matrix`: ``[W]`` or ``[W, b]`` shaped like the module's params."""
    if not st.has_bias:
        return [V]
    return [V[:, :-1], V[:, -1]]


def stage_params(st: Stage) -> List[torch.nn.Parameter]:
    return [st.linear.weight] + ([st.linear.bias] if st.has_bias else [])  # type: ignore[list-item]


def flatten(mats: Sequence[Tensor]) -> Tensor:
    """θ: the row-major flattening of the per-layer matrices, concatenated. (P,)"""
    return torch.cat([m.reshape(-1) for m in mats])


def unflatten(net: Network, vec: Tensor) -> List[Tensor]:
    """Inverse of :func:`flatten` for this network's layer shapes."""
    out, i = [], 0
    for st in net.stages:
        rows, cols = st.d_out, st.d_in + int(st.has_bias)
        out.append(vec[i:i + rows * cols].reshape(rows, cols))
        i += rows * cols
    if i != vec.numel():
        raise ValueError(f"a parameter vector of {vec.numel()} entries does not fit a net with {i}")
    return out


def param_dict(net: Network, model: torch.nn.Module, mats: Sequence[Tensor]) -> Dict[str, Tensor]:
    """``{name: tensor}`` for ``torch.func.functional_call`` from per-layer matrices."""
    ids = {id(p): name for name, p in model.named_parameters()}
    out: Dict[str, Tensor] = {}
    for st, V in zip(net.stages, mats):
        for p, t in zip(stage_params(st), split_matrix(st, V)):
            out[ids[id(p)]] = t
    return out
