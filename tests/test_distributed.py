"""Data-parallel training on torch.distributed (gloo, loopback): gnopt.distributed.

Every multi-process scenario runs inside a few process launches (starting Python + torch
dominates the cost), each rank returning what it saw; the tests then compare with one
process on the whole batch, float64, to ~1e-10 (sums in another order are the only change).
"""

from __future__ import annotations

import io
import os
import time

import pytest
import torch
from torch import nn

import gnopt
from gnopt.curvature.kfac import kfac_g
from gnopt.curvature.trace import forward_trace
from gnopt.distributed import (DistributedError, LocalCommunicator, Shard, assign_layers, launch, local_batch,
                               reduce_many, resolve_communicator, shard_range)
from gnopt.layers import parse_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

ATOL = 1e-10
STEPS = 4
CASES = {  # name: (optimiser, options); T_tau = 1 and T_gamma = 2 exercise ρ and the γ search
    "kfra": ("kfra", {"T_tau": 1, "T_gamma": 2, "factor_period": 1, "step_size_fraction": 1.0}),
    # the defaults' amortisation; δᵀḠδ on the first half of the global batch (ranks 0 and 1 of 3)
    "kfra-sub": ("kfra", {"T_tau": 1, "T_gamma": 2, "factor_period": 2, "step_size_fraction": 0.5}),
    # the same with the step-size check firing at every step: δᵀḠδ and ρ on the whole batch
    "kfra-sub-full": ("kfra", {"T_tau": 1, "T_gamma": 2, "factor_period": 2, "step_size_fraction": 0.5,
                               "step_size_check": 1e-12}),
    "kflr": ("kflr", {"T_tau": 1, "T_gamma": 2, "damping": "eigen"}),
    "kfac": ("kfac", {"T_tau": 1, "T_gamma": 2, "samples": 2, "curvature_ema": 0.5}),
    "block": ("block", {"T_tau": 1, "T_gamma": 2}),
    "hf": ("hf", {}),
    # the step guard: step 2 verified and kept, step 3 back-tracked twice (all ranks decide alike)
    "kfra-guard": ("kfra", {"T_tau": 2, "T_gamma": 2, "factor_period": 1, "step_size_fraction": 0.5, "tau": 1e-2,
                            "gamma": 1e-2, "step_guard": 1.01, "guard_rho": 0.95, "guard_tries": 2}),
    # at n = 50 on three unequal shards (δᵀḠδ on the first 20 rows: ranks 0 and 1): step 2
    # back-tracked three times and kept; or (ρ ≥ 0.97 demanded, one retry) step 2 rejected by
    # the guard, θ restored on every rank, and step 3 verified and kept
    "kfra-guard-backtrack": ("kfra", {"T_tau": 2, "T_gamma": 2, "factor_period": 1, "step_size_fraction": 0.4,
                                      "tau": 3e-3, "gamma": 1e-2, "step_guard": 1.01, "guard_rho": 0.9,
                                      "guard_tries": 3}),
    "kfra-guard-reject": ("kfra", {"T_tau": 2, "T_gamma": 2, "factor_period": 1, "step_size_fraction": 0.4,
                                   "tau": 1e-2, "gamma": 1e-2, "step_guard": 1.01, "guard_rho": 0.97,
                                   "guard_tries": 1}),
}
THREE_RANK_CASES = ("kfra", "kfra-sub", "kfra-sub-full", "kfac", "hf", "kfra-guard-backtrack", "kfra-guard-reject")


# -- fixtures shared by the parent and the ranks ----------------------------------------------
def autoencoder(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 8), nn.Sigmoid(),
                         nn.Linear(8, 12)).double()


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    return torch.sigmoid(z @ torch.randn(3, 12, generator=g) * 2).double()


def global_batch(t, n):
    """The global minibatch of step t (the same on every rank)."""
    x = data(3 * n, seed=1)
    i = (t * n // 2) % (2 * n)
    return x[i:i + n]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def train(comm, name, opts, n, steps, start=0, model=None, opt=None):
    """``steps`` steps on this rank's shard of the global batches (all of it for one process)."""
    if model is None:
        model = autoencoder()
        opt = gnopt.make_optimizer(name, model, "bce", **opts)
    infos = []
    for t in range(start, start + steps):
        x = global_batch(t, n)
        xs, ys = local_batch(x, x, comm)
        infos.append(opt.step(xs, ys).as_dict())
    return model, opt, infos


def single(name, opts, n, steps=STEPS):
    model, opt, infos = train(LocalCommunicator(), name, dict(opts, distributed=False), n, steps)
    return params(model), infos


def close(a, b, atol=ATOL):
    return max(float((p - q).abs().max()) for p, q in zip(a, b)) <= atol


# -- what the ranks do ------------------------------------------------------------------------
def _equivalence(comm, n, names):
    out = {}
    for key in names:
        name, opts = CASES[key]
        model, opt, infos = train(comm, name, opts, n, STEPS)
        out[key] = {"params": params(model), "infos": infos, "comm": opt.comm.stats.snapshot(),
                    "type": type(opt.comm).__name__}
    return out


def _fault(comm, mode, keep, out):
    """Last scenario of a launch: rank 1 dies or hangs; the others must fail, not hang.

    Runs on a second process group with a 3 s timeout (``new_group``), through an injected
    communicator. A dying rank first saves its results to ``keep``.
    """
    import datetime

    import torch.distributed as dist

    from gnopt.distributed import TorchDistributedCommunicator

    group = dist.new_group(timeout=datetime.timedelta(seconds=3))
    fast = TorchDistributedCommunicator(group=group, timeout_s=3)
    model, opt, _ = train(fast, "kfra", {"distributed": fast}, 16, 1)
    if comm.rank == 1:
        if mode == "dies":
            torch.save(out, keep)
            os._exit(0)  # no goodbye: its sockets close
        time.sleep(5.0)  # alive but stuck: only the timeout can notice
        return
    t0 = time.monotonic()
    try:
        train(fast, "kfra", {}, 16, 3, start=1, model=model, opt=opt)
        out["fault"] = {"error": None, "elapsed": time.monotonic() - t0}
    except DistributedError as e:
        out["fault"] = {"error": str(e), "elapsed": time.monotonic() - t0}


def _two_rank_worker(comm, keep):
    n = 48
    out = {"equivalence": _equivalence(comm, n, list(CASES))}

    # a bad batch on rank 1 only: every rank rejects, nobody's parameters move
    model, opt, _ = train(comm, "kflr", {}, n, 1)
    before = params(model)
    x = global_batch(1, n)
    xs, ys = local_batch(x, x, comm)
    if comm.rank == 1:
        xs = xs.clone()
        xs[2, 3] = float("nan")
    bad = opt.step(xs, ys)
    unchanged = all(torch.equal(p, q) for p, q in zip(params(model), before))
    good = opt.step(*local_batch(x, x, comm))
    out["reject"] = {"bad": bad.as_dict(), "unchanged": unchanged, "good": good.as_dict(), "params": params(model)}

    # checkpoint after 3 steps (rank 0's is saved), then 3 more steps
    model, opt, _ = train(comm, "kfac", {"curvature_ema": 0.9, "T_tau": 1, "T_gamma": 2}, n, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    ckpt = buf.getvalue()
    model, opt, _ = train(comm, "kfac", {}, n, 3, start=3, model=model, opt=opt)
    out["checkpoint"] = {"ckpt": ckpt, "params": params(model)}

    # a DistributedDataParallel model: unwrapped by the optimiser; pure functions explain
    ddp = nn.parallel.DistributedDataParallel(autoencoder())
    opt = gnopt.GaussNewton(ddp, "bce", "kfra", T_tau=1)
    for t in range(2):
        x = global_batch(t, n)
        opt.step(*local_batch(x, x, comm))
    try:
        gnopt.kronecker_factors(ddp, x, x, "bce")
        msg = ""
    except ValueError as e:
        msg = str(e)
    out["ddp"] = {"params": params(ddp.module), "message": msg}
    _fault(comm, "dies", keep, out)
    return out


def _three_rank_worker(comm):
    n = 50  # shards of 17, 17 and 16 rows: weighted by size
    out = {"equivalence": _equivalence(comm, n, THREE_RANK_CASES)}
    shared = {}
    for ws in (True, False):
        model, opt, _ = train(comm, "kfra", {"T_gamma": 2, "work_sharing": ws}, n, 3)
        m2, opt2, _ = train(comm, "kflr", {"damping": "eigen", "T_gamma": 2, "work_sharing": ws}, n, 3)
        shared[ws] = {"kfra": params(model), "kflr": params(m2), "owners": opt.share.owners if opt.share else None}
    out["sharing"] = shared
    _fault(comm, "hangs", None, out)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny float64 nets: threads only cost (OpenMP spinning on a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    keep = str(tmp_path_factory.mktemp("dist") / "rank1.pt")
    res = launch(_two_rank_worker, 2, (keep,), threads=1, timeout_s=60, deadline_s=240)
    assert res[1] is None  # rank 1 died at the end, after saving what it saw
    res[1] = torch.load(keep, weights_only=False)
    return res


@pytest.fixture(scope="module")
def three_ranks():
    return launch(_three_rank_worker, 3, threads=1, timeout_s=60, deadline_s=240)


# -- equivalence with one process on the whole batch -----------------------------------------
def test_the_guard_case_exercises_the_step_guard():
    _, infos = single(*CASES["kfra-guard"], n=48)
    assert [i.get("guard_checks") for i in infos] == [None, 1.0, 3.0, None]
    assert not any(i["rejected"] for i in infos)


def test_the_full_rows_case_falls_back_at_every_step():
    _, infos = single(*CASES["kfra-sub-full"], n=50)
    assert [i.get("full_rows") for i in infos] == [1.0] * STEPS
    _, infos = single(*CASES["kfra-sub"], n=50)
    assert not any(i.get("full_rows") for i in infos)


def test_the_three_rank_guard_cases_back_track_and_reject():
    _, infos = single(*CASES["kfra-guard-backtrack"], n=50)
    assert [i.get("guard_checks") for i in infos] == [None, 4.0, None, None]
    assert not any(i["rejected"] for i in infos)
    _, infos = single(*CASES["kfra-guard-reject"], n=50)
    assert [i["rejected"] for i in infos] == [False, True, False, False]
    assert infos[1]["reason"].startswith("step guard")
    assert infos[2].get("guard_checks") == 1.0


def _same_steps(infos, ref_infos, key):
    """Every rank's StepInfo equals one process's: rejections, the global loss, ρ, τ, γ, α."""
    for a, b in zip(infos, ref_infos):
        assert a["rejected"] == b["rejected"] and a["reason"] == b["reason"], key
        assert a.get("guard_checks") == b.get("guard_checks"), key
        for k in ("loss", "alpha", "rho", "tau", "gamma"):
            if b[k] is None:
                assert a[k] is None
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), (key, k)


@pytest.mark.parametrize("key", list(CASES))
def test_two_ranks_equal_one_process_on_the_whole_batch(two_ranks, key):
    ref, ref_infos = single(*CASES[key], n=48)
    r0, r1 = (r["equivalence"][key] for r in two_ranks)
    assert r0["type"] == "TorchDistributedCommunicator"
    assert close(r0["params"], ref), key
    assert all(torch.equal(p, q) for p, q in zip(r0["params"], r1["params"]))  # identical steps on all ranks
    assert r0["infos"] == r1["infos"]
    _same_steps(r0["infos"], ref_infos, key)
    if key != "kfra-guard-reject":
        assert not any(i["rejected"] for i in r0["infos"]), key
    assert r0["comm"]["all_reduce_bytes"] > 0


@pytest.mark.parametrize("key", THREE_RANK_CASES)
def test_three_unequal_shards_equal_one_process(three_ranks, key):
    assert [shard_range(50, r, 3) for r in range(3)] == [(0, 17), (17, 34), (34, 50)]
    ref, ref_infos = single(*CASES[key], n=50)
    runs = [r["equivalence"][key] for r in three_ranks]
    assert close(runs[0]["params"], ref), key
    _same_steps(runs[0]["infos"], ref_infos, key)
    for r in runs[1:]:
        assert all(torch.equal(p, q) for p, q in zip(runs[0]["params"], r["params"]))
        assert r["infos"] == runs[0]["infos"]


def test_work_sharing_equals_replicated(three_ranks):
    for r in three_ranks:
        on, off = r["sharing"][True], r["sharing"][False]
        assert off["owners"] is None and sorted(set(on["owners"])) == [0, 1, 2]
        for k in ("kfra", "kflr"):
            assert all(torch.equal(p, q) for p, q in zip(on[k], off[k])), k
    for k in ("kfra", "kflr"):
        assert all(torch.equal(p, q) for p, q in zip(three_ranks[0]["sharing"][True][k],
                                                       three_ranks[2]["sharing"][True][k]))


# -- faults -----------------------------------------------------------------------------------
def test_bad_batch_on_one_rank_is_rejected_by_all(two_ranks):
    r0, r1 = (r["reject"] for r in two_ranks)
    for r in (r0, r1):
        assert r["bad"]["rejected"] and "loss" in r["bad"]["reason"]
        assert r["unchanged"]
        assert not r["good"]["rejected"]
    assert r0["bad"] == r1["bad"] and r0["good"] == r1["good"]
    assert all(torch.equal(p, q) for p, q in zip(r0["params"], r1["params"]))


def test_dead_rank_fails_the_others_with_a_clear_error(two_ranks):
    f = two_ranks[0]["fault"]
    assert f["error"] is not None, "rank 0 kept training alone"
    assert "another rank has probably died" in f["error"] and "rank 0 of 2" in f["error"]
    assert f["elapsed"] < 3 + 5  # at most the 3 s timeout, plus slack for a loaded machine


def test_stuck_rank_fails_the_others_after_the_timeout(three_ranks):
    for r in (0, 2):
        f = three_ranks[r]["fault"]
        assert f["error"] is not None, f"rank {r} kept training without rank 1"
        assert f"rank {r} of 3" in f["error"] and "within 3 s" in f["error"]
        assert 2.5 < f["elapsed"] < 3 + 5
    assert "fault" not in three_ranks[1]


# -- checkpoints and DDP ----------------------------------------------------------------------
def test_checkpoint_of_distributed_run_resumes_on_one_process(two_ranks):
    r0, r1 = (r["checkpoint"] for r in two_ranks)
    s0 = torch.load(io.BytesIO(r0["ckpt"]), weights_only=False)
    s1 = torch.load(io.BytesIO(r1["ckpt"]), weights_only=False)
    f0, f1 = s0["opt"]["curvature_state"]["factors"], s1["opt"]["curvature_state"]["factors"]
    assert all(torch.equal(a, b) for fa, fb in zip(f0, f1) for a, b in zip(fa, fb))  # the same on every rank
    model = autoencoder(5)
    model.load_state_dict(s0["model"])
    opt = gnopt.make_optimizer("kfac", model, "bce", curvature_ema=0.9, T_tau=1, T_gamma=2, distributed=False)
    opt.load_state_dict(s0["opt"])
    train(LocalCommunicator(), "kfac", {}, 48, 3, start=3, model=model, opt=opt)
    assert close(params(model), r0["params"])


def test_ddp_model_is_unwrapped_and_pure_functions_explain(two_ranks):
    ref_model = autoencoder()
    opt = gnopt.GaussNewton(ref_model, "bce", "kfra", T_tau=1, distributed=False)
    for t in range(2):
        x = global_batch(t, 48)
        opt.step(x, x)
    r0 = two_ranks[0]["ddp"]
    assert close(r0["params"], params(ref_model))
    assert "DistributedDataParallel" in r0["message"] and "model.module" in r0["message"]


# -- in-process units -------------------------------------------------------------------------
def test_local_communicator_and_auto_are_no_ops():
    c = resolve_communicator("auto")
    assert isinstance(c, LocalCommunicator) and not c.distributed
    t = torch.randn(3)
    assert c.all_reduce_sum(t) is t and c.broadcast(t) is t and c.any(True) and not c.any(False)
    assert c.stats.calls == 0
    assert isinstance(gnopt.GaussNewton(autoencoder(), "bce").comm, LocalCommunicator)
    with pytest.raises(DistributedError, match="init"):
        resolve_communicator(True)
    with pytest.raises(ValueError):
        resolve_communicator("yes")


def test_assign_layers_greedy_balanced():
    assert assign_layers([1, 8, 1, 8], 2) == [0, 0, 1, 1]
    assert assign_layers([5, 4, 3, 3, 3], 2) == [0, 1, 1, 0, 1]
    assert assign_layers([1.0], 3) == [0]
    costs = [9, 7, 6, 5, 4, 3, 2, 1]
    owners = assign_layers(costs, 3)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(3)]
    assert max(loads) - min(loads) <= max(costs)


def test_reduce_many_keeps_shapes_and_dtypes():
    ts = [torch.ones(2, 3), torch.arange(4.0, dtype=torch.float64), torch.zeros(())]
    out = reduce_many(lambda t: 2 * t, ts)
    assert [o.shape for o in out] == [t.shape for t in ts] and [o.dtype for o in out] == [t.dtype for t in ts]
    assert all(torch.equal(o, 2 * t) for o, t in zip(out, ts))


@pytest.mark.parametrize("loss", ["mse", "bce", "ce", "mixture"])
def test_kfac_draws_global_samples_consistently(loss):
    """Shards drawing with global_rows and the same generator state reproduce the full draw."""
    k = {"ce": 4, "mixture": 3}.get(loss, 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, k)).double()
    x = torch.randn(11, 5, dtype=torch.float64)
    net, lossfn = parse_model(model), gnopt.get_loss(loss)
    with torch.no_grad():
        full = kfac_g(net, forward_trace(net, x), lossfn, samples=3, generator=torch.Generator().manual_seed(7))
        parts = []
        for a, b in [(0, 4), (4, 11)]:
            tr = forward_trace(net, x[a:b])
            g = kfac_g(net, tr, lossfn, samples=3, generator=torch.Generator().manual_seed(7), global_rows=(a, 11))
            parts.append([G * (b - a) / 11 for G in g])
    for F, A, B in zip(full, *parts):
        torch.testing.assert_close(A + B, F, atol=1e-12, rtol=1e-12)


def test_shard_weights_by_size():
    class Fake(LocalCommunicator):
        world_size = 2  # a "sum" over two identical ranks

        def _all_reduce(self, buf):
            buf.mul_(2)

    s = Shard(Fake(), (3, 1))
    assert s.n == 3 and s.total == 4 and s.offset == 0 and s.rows == (0, 4)
    assert float(s.mean(torch.tensor(4.0, dtype=torch.float64))) == 6.0  # 2 * 3/4 * 4
    with pytest.raises(ValueError):
        local_batch(torch.zeros(1, 2), torch.zeros(1, 2), Fake())
