"""Each loss's gradient, output Hessian, square root (eq. 23), products and sampler."""

import pytest
import torch
from torch.func import grad, hessian

import gnopt
from helpers import LOSSES, batch


def _setup(loss, n=6, k=3, seed=0):
    lossfn = gnopt.get_loss(loss)
    k = 3
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    _, y = batch(loss, n, 2, k, seed=seed + 1)
    return lossfn, h, y


@pytest.mark.parametrize("loss", LOSSES)
def test_grad_and_hessian_match_autograd(loss):
    lossfn, h, y = _setup(loss)
    for i in range(h.shape[0]):
        f = lambda hi: lossfn.per_example(hi.unsqueeze(0), y[i:i + 1]).sum()  # noqa: E731
        torch.testing.assert_close(lossfn.grad(h, y)[i], grad(f)(h[i]))
        torch.testing.assert_close(lossfn.hessian(h, y)[i], hessian(f)(h[i]))
    torch.testing.assert_close(lossfn(h, y), lossfn.per_example(h, y).mean())


@pytest.mark.parametrize("loss", LOSSES)
def test_sqrt_products_and_top(loss):
    lossfn, h, y = _setup(loss)
    H = lossfn.psd_hessian(h, y)
    assert torch.linalg.eigvalsh(H).min() > -1e-12
    S = lossfn.hessian_sqrt(h, y)
    torch.testing.assert_close(S @ S.transpose(-1, -2), H)
    cols = torch.cat([lossfn.sqrt_columns(h, y, a, min(a + 2, lossfn.sqrt_rank(h))) for a in range(0, lossfn.sqrt_rank(h), 2)])
    torch.testing.assert_close(torch.einsum("rni,rnj->nij", cols, cols), H)
    u = torch.randn_like(h)
    torch.testing.assert_close(lossfn.hessian_vp(h, y, u), torch.einsum("nij,nj->ni", H, u))
    d1 = torch.rand_like(h)
    torch.testing.assert_close(lossfn.mean_gn_top(h, y, d1), torch.einsum("ni,nij,nj->ij", d1, H, d1) / h.shape[0])
    if lossfn.psd:
        torch.testing.assert_close(H, lossfn.hessian(h, y))


def test_mixture_projection_clamps_negative_curvature():
    lossfn, h, y = _setup("mixture", n=200)
    H = lossfn.hessian(h, y)
    P = lossfn.psd_hessian(h, y)
    neg = torch.linalg.eigvalsh(H).min(-1).values < -1e-8
    assert neg.any(), "eq. (27) should have indefinite output Hessians somewhere"
    ok = ~neg
    torch.testing.assert_close(P[ok], H[ok])
    assert torch.linalg.eigvalsh(P).min() > -1e-12


def test_mixture_likelihood_normalised():
    lossfn = gnopt.BinaryMixtureLoss()
    h = torch.randn(10, 3, dtype=torch.float64)
    p0 = torch.exp(-lossfn.per_example(h, torch.zeros(10, dtype=torch.float64)))
    p1 = torch.exp(-lossfn.per_example(h, torch.ones(10, dtype=torch.float64)))
    torch.testing.assert_close(p0 + p1, torch.ones(10, dtype=torch.float64))


@pytest.mark.parametrize("loss", ["mse", "bce", "ce"])
def test_sampled_fisher_matches_hessian_for_exponential_families(loss):
    """E[g gᵀ] over y ~ p_θ equals H_L (eq. 54, App. C.2)."""
    lossfn, h, y = _setup(loss, n=3)
    g = lossfn.sample_grads(h, 40000, torch.Generator().manual_seed(0))
    F = torch.einsum("sni,snj->nij", g, g) / g.shape[0]
    torch.testing.assert_close(F, lossfn.psd_hessian(h, y), atol=0.03, rtol=0.05)
    torch.testing.assert_close(g.mean(0), torch.zeros_like(h), atol=0.03, rtol=0)


def test_get_loss_errors():
    with pytest.raises(ValueError, match="unknown loss"):
        gnopt.get_loss("hinge")
    assert isinstance(gnopt.get_loss("mixture"), gnopt.BinaryMixtureLoss)
    lossfn = gnopt.get_loss("mixture")
    with pytest.raises(ValueError, match="3 model outputs"):
        lossfn.check(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        lossfn.check(torch.zeros(2, 3), torch.tensor([0.5, 1.0]))
