"""Shared test utilities: tiny nets, targets per loss, brute-force oracles by torch.func."""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev

import gnopt
from gnopt.layers import parse_model
from gnopt.params import layer_matrix, split_matrix, stage_params

ACTS = {
    "identity": nn.Identity, "relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1), "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU,
}
LOSSES = ["mse", "bce", "ce", "mixture"]


def tiny_net(act: str = "tanh", sizes=(3, 5, 4), out: int = 3, bias: bool = True, seed: int = 0,
             last_act: bool = False) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: List[nn.Module] = []
    dims = list(sizes) + [out]
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1], bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / dims[i] ** 0.5 * 1.5)
            if bias:
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.3)
        layers.append(lin)
        if i < len(dims) - 2 or last_act:
            layers.append(ACTS[act]())
    return nn.Sequential(*layers).double()


def batch(loss: str, n: int, d_in: int, k: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    if loss == "mse":
        y = torch.randn(n, k, generator=g, dtype=torch.float64)
    elif loss == "bce":
        y = torch.rand(n, k, generator=g, dtype=torch.float64)
    elif loss == "ce":
        y = torch.randint(0, k, (n,), generator=g)
    elif loss == "mixture":
        y = torch.randint(0, 2, (n,), generator=g).double()
    else:
        raise ValueError(loss)
    return x, y


def out_dim(loss: str, k: int = 3) -> int:
    return 3 if loss == "mixture" else k


def brute_hessian_blocks(model: nn.Module, x: Tensor, y: Tensor, loss: str) -> List[Tensor]:
    """torch.func.hessian of the batch-mean loss w.r.t. each layer's V = [W | b]."""
    net = parse_model(model)
    lossfn = gnopt.get_loss(loss)
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for st in net.stages:
        V0 = layer_matrix(st).detach().clone()

        def f(V: Tensor, st=st) -> Tensor:
            params = {names[id(p)]: t for p, t in zip(stage_params(st), split_matrix(st, V))}
            return lossfn(functional_call(model, params, (x,)), y)

        H = hessian(f)(V0)
        out.append(H.reshape(V0.numel(), V0.numel()))
    return out


def brute_gn_blocks(model: nn.Module, x: Tensor, y: Tensor, loss: str) -> List[Tensor]:
    """Blocks of (1/N) Σ J_nᵀ H_L J_n with J by jacrev per layer, H_L by torch.func.hessian (PSD-projected)."""
    net = parse_model(model)
    lossfn = gnopt.get_loss(loss)
    names = {id(p): n for n, p in model.named_parameters()}
    hout = model(x).detach()
    Hs = []
    for i in range(x.shape[0]):
        Hn = hessian(lambda h: lossfn(h.unsqueeze(0), y[i:i + 1]))(hout[i])
        ev, U = torch.linalg.eigh(0.5 * (Hn + Hn.T))
        Hs.append(U @ torch.diag(ev.clamp(min=0)) @ U.T)
    H = torch.stack(Hs)
    out = []
    for st in net.stages:
        V0 = layer_matrix(st).detach().clone()

        def f(V: Tensor, st=st) -> Tensor:
            params = {names[id(p)]: t for p, t in zip(stage_params(st), split_matrix(st, V))}
            return functional_call(model, params, (x,))

        J = jacrev(f)(V0).reshape(x.shape[0], hout.shape[1], -1)
        out.append(torch.einsum("nkp,nkl,nlq->pq", J, H, J) / x.shape[0])
    return out


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not getattr(m, "_full_backward_hooks", None) for m in model.modules())
