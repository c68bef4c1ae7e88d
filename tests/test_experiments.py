"""gnopt.experiments: configs, JSONL metrics, checkpoints, the resumable runner, analyses."""

import copy
import json
import math

import pytest
import torch

from gnopt.experiments import (AlignConfig, BatchSampler, GridConfig, MetricsWriter, RankConfig, SurfaceConfig,
                               TrainConfig, grid_cells, load_checkpoint, read_metrics, resume, run_alignment,
                               run_grid, run_rank, run_surface, save_checkpoint, train)
from gnopt.experiments.evaluate import evaluate
from gnopt.experiments.metrics import truncate_metrics
from gnopt.models import autoencoder

TIME_KEYS = ("time_s", "wall_s")


@pytest.fixture(autouse=True)
def _one_thread_and_private_data(tmp_path_factory, monkeypatch):
    """One intra-op thread (OpenMP spin-waits make tiny ops 100x slower on a busy 2-core box)
    and a private data directory (tiny CURVES subsets are generated, never cached)."""
    monkeypatch.setenv("GNOPT_DATA", str(tmp_path_factory.mktemp("data")))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw):
    base = dict(dataset="curves", optimizer="kfra", steps=6, batch_size=16, limit=48, widths=(6, 3),
                eval_every=3, checkpoint_every=2, eval_chunk=20)
    base.update(kw)
    return TrainConfig(**base)


def strip_times(recs):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in recs]


def run_tiny(path, **kw):
    return train(tiny(**kw), path, progress=False, plot=False)


# -- config ------------------------------------------------------------------------------------
def test_config_roundtrip_and_resolution():
    c = tiny(opt_options={"T_gamma": 5}, widths=[4, 2])
    assert c.widths == (4, 2)
    assert TrainConfig.from_json(c.to_json()) == c
    d = TrainConfig().resolved()
    assert (d.dataset, d.optimizer, d.batch_size) == ("curves", "kfra", 1000)
    assert d.steps == 5000 and d.time_budget == 180.0
    assert TrainConfig(optimizer="adam", dataset="faces").resolved().steps == 160000
    assert TrainConfig(steps=10).resolved().time_budget is None
    with pytest.raises(ValueError):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"bogus": 1})


# -- sampler, metrics, checkpoints ----------------------------------------------------------------
def test_sampler_reproducible_and_restorable():
    a = BatchSampler(10, 4, seed=1)
    first = [a.next() for _ in range(3)]
    assert all(len(i) == 4 for i in first)
    assert len(set(torch.cat(first[:2]).tolist())) == 8  # no repeats within an epoch
    b = BatchSampler(10, 4, seed=1)
    b.next()
    sd = b.state_dict()
    c = BatchSampler(10, 4, seed=99)
    c.load_state_dict(sd)
    for _ in range(5):
        assert torch.equal(b.next(), c.next())
    assert torch.equal(BatchSampler(5, 100).next().sort().values, torch.arange(5))


def test_metrics_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    with MetricsWriter(p, "w") as w:
        w.write({"step": 1, "loss": float("nan"), "t": torch.tensor(2.5), "lst": (1, 2)})
        w.write({"step": 2, "loss": 1.0})
    recs = read_metrics(p)
    assert recs[0] == {"step": 1, "loss": None, "t": 2.5, "lst": [1, 2]}
    for line in p.read_text().splitlines():
        json.loads(line)  # strict JSON: no NaN
    with open(p, "a") as f:
        f.write('{"step": 3, "lo')  # a torn last line
    with pytest.warns(RuntimeWarning):
        assert len(read_metrics(p)) == 2
    with pytest.warns(RuntimeWarning):
        assert [r["step"] for r in truncate_metrics(p, 1)] == [1]
    assert [r["step"] for r in read_metrics(p)] == [1]


def test_checkpoint_atomic(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"step": 3, "x": torch.arange(3)})
    save_checkpoint(p, {"step": 4, "x": torch.arange(4)})
    s = load_checkpoint(p)
    assert s["step"] == 4 and torch.equal(s["x"], torch.arange(4))
    assert [q.name for q in tmp_path.iterdir()] == ["c.pt"]
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "other.pt")


def test_evaluate_matches_definitions():
    torch.manual_seed(0)
    m = autoencoder(12, widths=(5, 2), init="glorot")
    x = torch.rand(23, 12)
    ev = evaluate(m, x, x, "bce", chunk=5)
    with torch.no_grad():
        h = m(x)
    assert ev["sq_error"] == pytest.approx(float(((torch.sigmoid(h) - x) ** 2).sum(1).mean()), rel=1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(h, x, reduction="none").sum(1).mean()
    assert ev["objective"] == pytest.approx(float(bce), rel=1e-5)
    ev = evaluate(m, x, x, "mse", chunk=7)
    assert ev["sq_error"] == pytest.approx(float(((h - x) ** 2).sum(1).mean()), rel=1e-5)
    assert ev["objective"] == pytest.approx(0.5 * ev["sq_error"], rel=1e-5)


# -- the runner ----------------------------------------------------------------------------------
def test_train_writes_run_folder(tmp_path):
    res = train(tiny(), tmp_path / "run", progress=False, plot=True)
    d = tmp_path / "run"
    assert res.reason == "steps" and res.step == 6
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "objective.png"):
        assert (d / name).is_file(), name
    recs = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 7))
    for r in recs:
        assert {"step", "time_s", "loss", "alpha", "tau", "gamma", "rejected"} <= set(r)
    evals = [r["step"] for r in recs if "train_objective" in r]
    assert evals == [3, 6]
    assert {"train_sq_error", "train_objective_avg", "train_sq_error_avg", "l2"} <= set(recs[-1])
    assert math.isfinite(recs[-1]["train_sq_error"])
    ck = load_checkpoint(d / "checkpoint.pt")
    assert ck["step"] == 6 and "model" in ck and "optimizer" in ck and "sampler" in ck
    with pytest.raises(FileExistsError):
        train(tiny(), d, progress=False, plot=False)


@pytest.mark.parametrize("optimizer", ["kfra", "kfac", "adam"])
def test_resume_is_bit_identical(tmp_path, optimizer):
    kw = {"optimizer": optimizer, "curvature_ema": 0.9} if optimizer != "adam" else {"optimizer": optimizer}
    straight = run_tiny(tmp_path / "a", **kw)
    part = run_tiny(tmp_path / "b", **{**kw, "steps": 3})
    assert part.step == 3
    res = resume(tmp_path / "b", {"steps": 6}, progress=False, plot=False)
    assert res.step == 6 and straight.step == 6
    ma = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    mb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    ra = strip_times(read_metrics(tmp_path / "a" / "metrics.jsonl"))
    rb = strip_times(read_metrics(tmp_path / "b" / "metrics.jsonl"))
    assert ra == rb
    assert json.loads((tmp_path / "b" / "config.json").read_text())["steps"] == 6


def test_resume_rejects_changed_config(tmp_path):
    run_tiny(tmp_path / "r", steps=2)
    with pytest.raises(ValueError, match="cannot change"):
        resume(tmp_path / "r", {"lr": 0.5}, progress=False, plot=False)
    with pytest.raises(FileNotFoundError):
        resume(tmp_path / "nothing", progress=False, plot=False)


def test_matmul_precision_holds_for_the_run_only_and_is_part_of_its_config(tmp_path):
    """``matmul_precision`` is torch's float32 matmul precision while the run trains (seen from
    inside the loop), restored afterwards, written to config.json, and not changeable on resume."""
    with pytest.raises(ValueError, match="matmul_precision"):
        tiny(matmul_precision="bfloat16")
    old = {k: v for k, v in tiny().to_dict().items() if k != "matmul_precision"}  # a config.json of before
    assert TrainConfig.from_dict(old).matmul_precision == "highest"
    seen = []
    before = torch.get_float32_matmul_precision()
    res = train(tiny(matmul_precision="medium", steps=3), tmp_path / "m", progress=False, plot=False,
                callback=lambda rec: seen.append(torch.get_float32_matmul_precision()))
    assert res.step == 3 and seen == ["medium"] * 3
    assert torch.get_float32_matmul_precision() == before
    assert json.loads((tmp_path / "m" / "config.json").read_text())["matmul_precision"] == "medium"
    with pytest.raises(ValueError, match="cannot change"):
        resume(tmp_path / "m", {"matmul_precision": "highest", "steps": 4}, progress=False, plot=False)
    seen.clear()
    res = resume(tmp_path / "m", {"steps": 4}, progress=False, plot=False,
                 callback=lambda rec: seen.append(torch.get_float32_matmul_precision()))
    assert res.step == 4 and seen == ["medium"]
    assert torch.get_float32_matmul_precision() == before


def test_interrupt_leaves_valid_jsonl_and_checkpoint_then_resumes(tmp_path):
    def hook(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    res = train(tiny(steps=6, checkpoint_every=100), tmp_path / "r", progress=False, plot=False, callback=hook)
    assert res.interrupted and res.step == 3
    recs = read_metrics(tmp_path / "r" / "metrics.jsonl")  # every line parses
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 3
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["reason"] == "interrupted"
    resume(tmp_path / "r", progress=False, plot=False)
    straight = run_tiny(tmp_path / "s", steps=6, checkpoint_every=100)
    assert strip_times(read_metrics(tmp_path / "r" / "metrics.jsonl")) == \
        strip_times(read_metrics(tmp_path / "s" / "metrics.jsonl"))
    assert straight.step == 6


def test_interrupt_inside_an_update_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import gnopt.experiments.runner as runner

    real = runner.build_optimizer

    def build(config, model, loss):
        opt = real(config, model, loss)
        step = opt.step

        def flaky(x, y):
            if opt.step_count == 4:
                raise KeyboardInterrupt  # as if Ctrl-C were pressed twice mid-update
            return step(x, y)

        opt.step = flaky
        return opt

    monkeypatch.setattr(runner, "build_optimizer", build)
    res = train(tiny(steps=6, checkpoint_every=2), tmp_path / "r", progress=False, plot=False)
    assert res.interrupted and res.step == 4
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 4
    monkeypatch.setattr(runner, "build_optimizer", real)
    # metrics beyond the checkpoint are dropped on resume, and the run completes identically
    resume(tmp_path / "r", progress=False, plot=False)
    run_tiny(tmp_path / "s", steps=6, checkpoint_every=2)
    assert strip_times(read_metrics(tmp_path / "r" / "metrics.jsonl")) == \
        strip_times(read_metrics(tmp_path / "s" / "metrics.jsonl"))


def test_time_budget_stops_and_evaluates(tmp_path):
    res = train(tiny(steps=10_000, time_budget=0.3, eval_every=0), tmp_path / "r", progress=False, plot=False)
    assert res.reason == "time_budget" and 0 < res.step < 10_000
    recs = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert "train_objective" in recs[-1] and all("train_objective" not in r for r in recs[:-1])


def test_mixture_classifier_run(tmp_path):
    pytest.importorskip("numpy")
    from gnopt.data import load_dataset

    try:
        load_dataset("mnist", "test", data_dir="/work/shared/data")
    except Exception:
        pytest.skip("MNIST not available")
    res = train(tiny(dataset="mnist_oddeven", optimizer="kflr", data_dir="/work/shared/data", steps=2),
                tmp_path / "r", progress=False, plot=False)
    assert "train_error_rate" in res.last and 0 <= res.last["train_error_rate"] <= 1


# -- analyses ------------------------------------------------------------------------------------
def test_grid_runs_skips_and_marks_best(tmp_path):
    grid = GridConfig(base=tiny(optimizer="adam", steps=4, eval_every=0), methods=("adam",),
                      lr_exponents=(6, 10), decay_fractions=(1.0, 0.5))
    assert [c["decay_period"] for c in grid_cells(grid)] == [4, 2, 4, 2]
    rows = run_grid(grid, tmp_path, progress=False, plot=False)
    assert len(rows) == 4 and sum(r["best"] for r in rows) == 1
    assert all(r["status"] == "done" and r["objective"] is not None for r in rows)
    table = (tmp_path / "grid.txt").read_text()
    assert "*" in table and "2^-6" in table
    stamp = (tmp_path / rows[0]["name"] / "metrics.jsonl").stat().st_mtime_ns
    run_grid(grid, tmp_path, progress=False, plot=False)  # everything done: nothing reruns
    assert (tmp_path / rows[0]["name"] / "metrics.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError):
        GridConfig(base=tiny(), methods=("kfra",))


def test_alignment_tiny(tmp_path):
    cfg = AlignConfig(limit=40, widths=(5, 3), batch_size=20, steps=2, every=2, cg_max_iter=50,
                      methods=("kfra*", "kfac"))
    recs = run_alignment(cfg, tmp_path, plot=True, progress=False)
    assert [r["step"] for r in recs] == [0, 2]
    for r in recs:
        assert set(r["cos_full"]) == {"kfra*", "kfac"}
        assert len(r["cos_layer"]["kfra*"]) == 4
        for v in list(r["cos_full"].values()) + r["cos_layer"]["kfac"] + [r["cos_block_full"]]:
            assert -1.0001 <= v <= 1.0001
    assert (tmp_path / "alignment.png").is_file()
    assert len(read_metrics(tmp_path / "alignment.jsonl")) == 2


def test_alignment_exact_for_block_curvature_equivalent():
    """With a single-layer net block GN = full GN, so their cosine is 1."""
    from gnopt.experiments.alignment import cosine, exact_gn_directions, layer_gradients

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3, dtype=torch.float64))
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randn(10, 3, dtype=torch.float64)
    g = layer_gradients(m, x, y, "mse")
    block, full, stats = exact_gn_directions(m, x, y, "mse", g, k=0.1, tol=1e-12)
    assert cosine(block, full) == pytest.approx(1.0, abs=1e-9)
    # and it solves (G + kI) d = -g with the dense GN
    import gnopt

    G = gnopt.gauss_newton_matrix(m, x, y, "mse")
    d = torch.linalg.solve(G + 0.1 * torch.eye(G.shape[0], dtype=G.dtype), -g[0].reshape(-1))
    assert torch.allclose(full[0].reshape(-1), d, atol=1e-8)


def test_rank_bounds_hold(tmp_path):
    res = run_rank(RankConfig(batch_sizes=(1, 3, 40), widths=(4, 2), pool=7), tmp_path, plot=True)
    assert (tmp_path / "rank.json").is_file() and (tmp_path / "rank.png").is_file()
    for r in res["rows"]:
        assert r["rank_gn"] <= r["bound_gn"]
        assert all(a <= b for a, b in zip(r["rank_kflr_G"], r["bound_kflr_G"]))
        assert all(a <= b for a, b in zip(r["rank_kfac_G"], r["bound_kfac_G"]))
    assert res["rows"][0]["rank_gn"] == res["rows"][0]["rank_HL"]  # N = 1: rank = rank(H_L) (generic)


def test_surface_no_smooth_maxima(tmp_path):
    res = run_surface(SurfaceConfig(n=20, resolution=21, hessian_points=3), tmp_path, plot=True)
    assert res["a"].shape == (21, 21)
    assert res["interior_local_maxima"]["b"] == 0  # convex in W2
    assert res["min_block_eigenvalue"] > -1e-9 and res["min_trace"] >= 0
    assert (tmp_path / "surface.png").is_file()


@pytest.fixture
def pooled_data(monkeypatch):
    """CURVES pooled to 4x4 inputs: the dense per-layer blocks of "block" stay tiny."""
    import dataclasses

    import gnopt.experiments.runner as runner
    from gnopt.experiments.rank import pool_images

    real = runner.load_data

    def load(config):
        d = real(config)
        x = pool_images(d.x, 7)
        return dataclasses.replace(d, x=x, y=x, input_dim=16)

    monkeypatch.setattr(runner, "load_data", load)


@pytest.mark.parametrize("optimizer", ["kflr", "block", "hf", "sgd", "momentum", "nesterov"])
def test_every_optimizer_trains_and_resumes(tmp_path, optimizer, pooled_data):
    straight = run_tiny(tmp_path / "a", optimizer=optimizer, steps=4, eval_every=2, widths=(4, 2), limit=32)
    run_tiny(tmp_path / "b", optimizer=optimizer, steps=2, eval_every=2, widths=(4, 2), limit=32)
    resume(tmp_path / "b", {"steps": 4}, progress=False, plot=False)
    assert straight.step == 4 and math.isfinite(straight.last["train_objective"])
    assert strip_times(read_metrics(tmp_path / "a" / "metrics.jsonl")) == \
        strip_times(read_metrics(tmp_path / "b" / "metrics.jsonl"))


def test_real_sigint_is_deferred_to_the_end_of_the_update(tmp_path):
    import os
    import signal

    def hook(record):
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C once

    before = signal.getsignal(signal.SIGINT)
    res = train(tiny(), tmp_path / "r", progress=False, plot=False, callback=hook, handle_sigint=True)
    assert res.interrupted and res.step == 2
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


@pytest.mark.slow
def test_kfra_beats_adam_on_small_curves_net(tmp_path):
    """A longer experiment: 150 updates on a 784-64-32-16-8-... net, 2,000 CURVES images."""
    common = dict(steps=150, batch_size=200, limit=2000, widths=(64, 32, 16, 8), eval_every=50, eval_chunk=2000)
    k = train(tiny(optimizer="kfra", **common), tmp_path / "k", progress=False, plot=False)
    a = train(tiny(optimizer="adam", **common), tmp_path / "a", progress=False, plot=False)
    first = read_metrics(tmp_path / "k" / "metrics.jsonl")[0]["loss"]
    assert k.last["train_objective"] < 0.5 * first
    assert k.last["train_objective"] < a.last["train_objective"]


def test_device_is_part_of_the_config_checked_and_changeable_on_resume(tmp_path):
    """``device`` (default cpu) is written to config.json; a malformed or unusable device is
    refused with its name; ``--resume`` may move a run (here cpu → cpu; CUDA: test_cuda.py)."""
    assert tiny().device == "cpu"
    old = {k: v for k, v in tiny().to_dict().items() if k != "device"}  # a config.json of before
    assert TrainConfig.from_dict(old).device == "cpu"
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        tiny(device="gpu0")
    with pytest.raises(ValueError, match="device 'cuda:99'"):  # no CUDA here, or fewer than 100 GPUs
        run_tiny(tmp_path / "bad", device="cuda:99")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
    run_tiny(tmp_path / "r", steps=2)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["device"] == "cpu"
    res = resume(tmp_path / "r", {"steps": 4, "device": "cpu"}, progress=False, plot=False)
    assert res.step == 4


def test_state_to_device_keeps_structure_and_sharing():
    from gnopt.experiments.checkpoint import state_to_device
    from gnopt.linalg import FactoredFactors

    G = torch.eye(3, dtype=torch.float64) * 2
    fac = FactoredFactors.from_factors(G, G, 0.1, explicit_inverse=True)

    class Plain:
        def __init__(self):
            self.U = torch.ones(2)
            self.name = "x"

    t = torch.arange(4.0)
    sd = {"a": [t, (t, 3)], "fac": fac, "plain": Plain(), "none": None}
    out = state_to_device(sd, "cpu")
    assert out["a"][0] is out["a"][1][0]  # one tensor referenced twice stays one
    assert out["a"][1][1] == 3 and out["none"] is None and out["plain"].name == "x"
    assert isinstance(out["fac"], FactoredFactors)
    torch.testing.assert_close(out["fac"].solve(torch.ones(3, 3, dtype=torch.float64)),
                               fac.solve(torch.ones(3, 3, dtype=torch.float64)))


def test_gauss_newton_state_carries_the_device_generator():
    """KFAC on a GPU draws from a device generator: its state is in the state dict (None on
    the CPU, where the CPU generator is used) and is restored when the generator is made."""
    import gnopt

    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 4))
    opt = gnopt.GaussNewton(m, "bce", "kfac")
    x = torch.rand(8, 4)
    opt.step(x, x)
    sd = opt.state_dict()
    assert sd["device_rng"] is None
    other = gnopt.GaussNewton(copy.deepcopy(m), "bce", "kfac")
    sd["device_rng"] = torch.Generator().manual_seed(5).get_state()
    other.load_state_dict(sd)
    assert torch.equal(other._device_rng_state, sd["device_rng"])
    assert torch.equal(other.state_dict()["device_rng"], sd["device_rng"])  # kept until used
