"""CUDA: the same results on a GPU as on the CPU (issue 5, "the code runs on CUDA").

Skipped where torch sees no CUDA device (CI and the development machine have none); run on
a GPU machine by ``scripts/gpu_check.sh``. Each test compares a CUDA computation in float64
with the same computation on the CPU, so that only rounding can differ.
"""

import copy

import pytest
import torch
from torch import nn

import gnopt
from gnopt.linalg import FactoredFactors
from helpers import batch, out_dim, tiny_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


def _close(a, b, tol):
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["kfra", "kflr"])
@pytest.mark.parametrize("loss", ["mse", "bce", "ce", "mixture"])
def test_factors_on_cuda_equal_cpu(method, loss):
    k = out_dim(loss)
    model = tiny_net("tanh", out=k, seed=2)
    x, y = batch(loss, 7, 3, k)
    cpu = gnopt.kronecker_factors(model, x, y, loss, method)
    gpu = gnopt.kronecker_factors(copy.deepcopy(model).to(CUDA), x.to(CUDA), y.to(CUDA), loss, method)
    for a, b in zip(cpu, gpu):
        assert b.G.is_cuda and b.Q.is_cuda
        _close(b.G, a.G, 1e-10)
        _close(b.Q, a.Q, 1e-10)


def test_kfac_on_cuda_with_a_device_generator():
    model = tiny_net("tanh", out=3, seed=2).to(CUDA)
    x, y = (t.to(CUDA) for t in batch("bce", 9, 3, 3))
    g = torch.Generator(device=CUDA).manual_seed(0)
    fs = gnopt.kronecker_factors(model, x, y, "bce", "kfac", samples=4, generator=g)
    g2 = torch.Generator(device=CUDA).manual_seed(0)
    again = gnopt.kronecker_factors(model, x, y, "bce", "kfac", samples=4, generator=g2)
    for f, h in zip(fs, again):
        assert torch.equal(f.G, f.G.T) and torch.isfinite(f.G).all()
        assert torch.equal(f.G, h.G)  # reproducible from the generator


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [9, 17, 256, 513, 1001])
def test_padded_explicit_inverse_on_cuda(n, dtype):
    """The in-place, column-major Cholesky and inverse (``out=`` on a transposed view) on CUDA."""
    g = torch.Generator().manual_seed(n)
    A = torch.randn(n, 2 * n, generator=g, dtype=torch.float64)
    G = (A @ A.T / (2 * n)).to(dtype)
    Q = torch.eye(5, dtype=dtype) * 2
    V = torch.randn(n, 5, generator=g, dtype=torch.float64).to(dtype)
    cpu = FactoredFactors.from_factors(G, Q, 0.1, explicit_inverse=True).solve(V)
    gpu = FactoredFactors.from_factors(G.to(CUDA), Q.to(CUDA), 0.1, explicit_inverse=True).solve(V.to(CUDA))
    assert gpu.is_cuda
    _close(gpu, cpu, 1e-9 if dtype == torch.float64 else 2e-4)


def _autoencoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 8), nn.Sigmoid(),
                         nn.Linear(8, 12)).double()


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return torch.sigmoid(z @ torch.randn(3, 12, generator=g, dtype=torch.float64) * 2)


@pytest.mark.parametrize("opts", [{}, {"factor_period": 1, "step_size_fraction": 1.0, "T_gamma": 3},
                                  {"curvature": "kflr", "damping": "eigen", "T_gamma": 4},
                                  {"explicit_inverse": False, "T_gamma": 4}])
def test_gauss_newton_on_cuda_follows_cpu(opts):
    """12 updates on CUDA and on the CPU in float64: the same path up to rounding (the γ
    search and τ make the same choices), and the parameters stay on the device."""
    opts = dict(opts)
    curvature = opts.pop("curvature", "kfra")
    x = _data()
    runs = []
    for dev in ("cpu", CUDA):
        model = _autoencoder().to(dev)
        opt = gnopt.GaussNewton(model, "bce", curvature, timing=True, **opts)
        infos = [opt.step(x.to(dev), x.to(dev)) for _ in range(12)]
        assert all(p.device.type == torch.device(dev).type for p in model.parameters())
        runs.append((model, infos))
    (m_cpu, i_cpu), (m_gpu, i_gpu) = runs
    assert [i.gamma for i in i_cpu] == [i.gamma for i in i_gpu]
    assert [i.rejected for i in i_cpu] == [i.rejected for i in i_gpu]
    for a, b in zip(i_cpu, i_gpu):
        assert abs(a.loss - b.loss) <= 1e-8 * abs(a.loss)
    for p, q in zip(m_cpu.parameters(), m_gpu.parameters()):
        _close(q, p, 1e-7)
    assert i_gpu[0].extra["t_factors"] > 0  # the phase timer synchronises the device and runs


def test_kfac_optimiser_and_hessian_free_on_cuda_decrease_the_loss():
    x = _data().to(CUDA)
    for make in (lambda m: gnopt.GaussNewton(m, "bce", "kfac"), lambda m: gnopt.HessianFree(m, "bce")):
        model = _autoencoder().to(CUDA)
        opt = make(model)
        infos = [opt.step(x, x) for _ in range(15)]
        assert infos[-1].loss < infos[0].loss
        assert all(torch.isfinite(p).all() and p.is_cuda for p in model.parameters())


def test_bench_step_runs_on_cuda(capsys):
    from gnopt.cli import main

    assert main(["bench", "step", "--tiny", "--in-process", "--device", "cuda", "--configs", "adam,kfra"]) == 0
    out = capsys.readouterr().out
    assert "peak device memory" in out and "cuda" in out


@pytest.mark.parametrize("optimizer", ["kfra", "kfac", "adam"])
def test_train_on_cuda_resumes_bit_identically(tmp_path, monkeypatch, optimizer):
    """``gnopt train --device cuda``: a run interrupted and resumed on the GPU equals the
    uninterrupted one (KFAC: the device generator's state is checkpointed)."""
    from gnopt.experiments.checkpoint import load_checkpoint
    from gnopt.experiments.config import TrainConfig
    from gnopt.experiments.runner import resume, train

    monkeypatch.setenv("GNOPT_DATA", str(tmp_path / "data"))
    cfg = TrainConfig(dataset="curves", optimizer=optimizer, steps=6, batch_size=16, limit=48, widths=(6, 3),
                      eval_every=3, checkpoint_every=2, eval_chunk=20, device="cuda")
    a = train(cfg, tmp_path / "a", progress=False, plot=False)
    train(cfg.replace(steps=3), tmp_path / "b", progress=False, plot=False)
    b = resume(tmp_path / "b", {"steps": 6}, progress=False, plot=False)
    assert a.step == b.step == 6
    ma = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    mb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


def test_cpu_run_resumed_on_cuda_continues(tmp_path, monkeypatch):
    """A CPU checkpoint (factors or cached solvers, on the CPU) continues on the GPU."""
    from gnopt.experiments.config import TrainConfig
    from gnopt.experiments.runner import resume, train

    monkeypatch.setenv("GNOPT_DATA", str(tmp_path / "data"))
    cfg = TrainConfig(dataset="curves", optimizer="kfra", steps=4, batch_size=16, limit=48, widths=(6, 3),
                      eval_every=2, checkpoint_every=2, eval_chunk=20, opt_options={"factor_period": 3})
    train(cfg, tmp_path / "r", progress=False, plot=False)
    res = resume(tmp_path / "r", {"steps": 8, "device": "cuda"}, progress=False, plot=False)
    assert res.step == 8 and res.last["loss"] == res.last["loss"]  # finite, not NaN


def test_direction_leaves_the_device_generator_as_it_was():
    """``direction`` changes no state: KFAC's device generator is neither created nor advanced."""
    model = _autoencoder().to(CUDA)
    x = _data().to(CUDA)
    opt = gnopt.GaussNewton(model, "bce", "kfac")
    opt.direction(x, x)
    assert opt._device_generator is None
    opt.step(x, x)
    state = opt._device_generator.get_state()
    opt.direction(x, x)
    assert torch.equal(opt._device_generator.get_state(), state)


def test_bench_factors_runs_on_cuda(capsys):
    from gnopt.cli import main

    assert main(["bench", "factors", "--tiny", "--in-process", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "peak device memory" in out and "(cuda" in out
