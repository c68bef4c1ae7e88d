"""The paper's nets: shapes, activations, initialisations, curvature-engine compatibility."""

import pytest
import torch
from torch import nn

import gnopt
from gnopt.models import (ACTIVATION_NAMES, PAPER_WIDTHS, autoencoder, linear_layers, mixture_classifier,
                          model_for_dataset, parse_widths)


def _sizes(model):
    lins = linear_layers(model)
    return [lins[0].in_features] + [m.out_features for m in lins]


def test_paper_autoencoder_architecture():
    m = autoencoder(784)
    assert isinstance(m, nn.Sequential)
    assert _sizes(m) == [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    # sigmoid hidden units, linear code layer (index 3 of the linear layers) and linear output
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear",
                     "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]
    assert isinstance(m[-1], nn.Linear)


def test_paper_classifier_architecture():
    m = mixture_classifier(784)
    assert _sizes(m) == [784, 1000, 500, 250, 30, 3]
    assert isinstance(m[-1], nn.Linear) and isinstance(m[-2], nn.Sigmoid)
    assert model_for_dataset("mnist_oddeven", 784, widths=(8, 4))[-1].out_features == 3


def test_widths_and_options():
    m = autoencoder(20, widths=(8, 4), activation="tanh", code_linear=False, init="glorot")
    assert _sizes(m) == [20, 8, 4, 8, 20]
    assert sum(isinstance(x, nn.Tanh) for x in m) == 3
    assert parse_widths("16, 8,4") == (16, 8, 4)
    with pytest.raises(ValueError):
        parse_widths("a,b")
    with pytest.raises(ValueError):
        autoencoder(10, activation="swishy")
    with pytest.raises(ValueError):
        autoencoder(10, init="zeros")


def test_sparse_init_counts():
    m = autoencoder(50, widths=(40, 10))
    for lin in linear_layers(m):
        nnz = (lin.weight != 0).sum(dim=1)
        assert torch.all(nnz == min(15, lin.in_features))
        assert torch.all(lin.bias == 0)
    t = autoencoder(50, widths=(40, 10), activation="tanh")
    first = linear_layers(t)[0]
    assert torch.all(first.bias == 0.5)
    # output layer is linear: ordinary sparse biases
    assert torch.all(linear_layers(t)[-1].bias == 0)


def test_seed_determinism_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = autoencoder(30, widths=(10, 5), seed=3)
    assert torch.equal(state, torch.get_rng_state())
    b = autoencoder(30, widths=(10, 5), seed=3)
    c = autoencoder(30, widths=(10, 5), seed=4)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("act", ACTIVATION_NAMES)
def test_curvature_engine_accepts_every_activation(act):
    torch.manual_seed(0)
    m = autoencoder(6, widths=(5, 3), activation=act, init="default", dtype=torch.float64)
    x = torch.rand(4, 6, dtype=torch.float64)
    fs = gnopt.kronecker_factors(m, x, x, "bce", "kfra")
    assert len(fs) == len(linear_layers(m))


def test_classifier_with_mixture_loss():
    m = mixture_classifier(6, widths=(5, 3), dtype=torch.float64)
    x = torch.rand(4, 6, dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    loss = gnopt.get_loss("mixture")
    assert torch.isfinite(loss(m(x), y))
    fs = gnopt.kronecker_factors(m, x, y, "mixture", "kflr")
    assert fs[-1].G.shape == (3, 3)


def test_paper_widths_constant():
    assert PAPER_WIDTHS == (1000, 500, 250, 30)
