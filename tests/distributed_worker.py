"""The MPI side of tests/test_distributed.py: `mpirun -n 2 python distributed_worker.py
SCENARIO OUTDIR` runs one scenario on every rank and writes what each rank saw to OUTDIR
(rank<r>.npz / rank<r>.json); the test compares that with single-process runs of the same
models, built by the functions here."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

import chainrule as cr

L = cr.layers


# -- the models and data both sides build -------------------------------------------------
def top_probability(y_true, y_pred):
    """A custom (Python) metric: each sample's largest predicted probability."""
    return np.max(y_pred, axis=1)


def dense_model(optimizer):
    model = cr.Sequential([
        L.Dense(16, activation="tanh", kernel_regularizer=cr.regularizers.L2(1e-3)),
        L.Dense(3, activation="softmax", kernel_regularizer=cr.regularizers.L1L2(1e-4, 1e-3)),
    ], dtype="float64", seed=3)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build((6,))
    return model


def conv_model(optimizer):
    model = cr.Sequential([
        L.Conv2D(4, 3, activation="relu", kernel_regularizer=cr.regularizers.L2(1e-3)),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(3, activation="softmax"),
    ], dtype="float64", seed=4)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build((8, 8, 1))
    return model


OPTIMIZERS = {
    "sgd_momentum": lambda: cr.optimizers.SGD(0.05, momentum=0.9),
    "adam_clipnorm": lambda: cr.optimizers.Adam(0.01, clipnorm=0.5),
}
NETWORKS = {"dense": dense_model, "conv": conv_model}

# 61 training rows in batches of 10: the last batch has 1 row, so one rank gets none.
N_TRAIN, N_VAL, BATCH, EPOCHS = 61, 13, 10, 3


def data(network, n, seed):
    rng = np.random.default_rng(seed)
    shape = (n, 6) if network == "dense" else (n, 8, 8, 1)
    x = rng.standard_normal(shape)
    y = rng.integers(0, 3, n)
    return x, y


def equivalence_case(network, optimizer, more_metrics=False):
    """(model, fit arguments) of one equivalence case: validation data, sample weights,
    shuffling, a fixed seed. more_metrics (the dense network): a metric of the core's beyond
    accuracy and a Python one, both summed over the ranks (a model file cannot hold the
    Python one: no ModelCheckpoint then)."""
    x, y = data(network, N_TRAIN, 10)
    xv, yv = data(network, N_VAL, 11)
    sw = np.random.default_rng(12).uniform(0.5, 2.0, N_TRAIN)
    model = NETWORKS[network](OPTIMIZERS[optimizer]())
    if more_metrics and network == "dense":
        model.compile(optimizer=model.optimizer, loss=model.loss,
                      metrics=["accuracy", cr.metrics.SparseTopKCategoricalAccuracy(k=2), top_probability])
    return model, dict(x=x, y=y, sample_weight=sw, validation_data=(xv, yv), epochs=EPOCHS,
                       batch_size=BATCH, seed=7, verbose=0)


def weights_per_epoch(model):
    """A callback keeping the weights after every epoch, and the list it fills."""
    kept = []
    cb = cr.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: kept.append(model.get_weights()))
    return cb, kept


# Shards for distributed="local": rank r holds SHARDS[r] rows of its own.
SHARDS = (23, 14)
SHARD_BATCH = 8


def shard(rank):
    x, y = data("dense", sum(SHARDS), 20)
    lo = sum(SHARDS[:rank])
    return x[lo:lo + SHARDS[rank]], y[lo:lo + SHARDS[rank]]


def shard_val(rank):
    x, y = data("dense", 11, 21)
    return (x[:7], y[:7]) if rank == 0 else (x[7:], y[7:])


# -- scenarios (run under mpirun) -----------------------------------------------------------
def _save(outdir, rank, arrays, info):
    np.savez(os.path.join(outdir, f"rank{rank}.npz"), **arrays)
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


def scenario_equivalence(rank, outdir):
    arrays, info = {}, {}
    for network in NETWORKS:
        for optimizer in OPTIMIZERS:
            model, kw = equivalence_case(network, optimizer, more_metrics=True)
            cb, kept = weights_per_epoch(model)
            h = model.fit(**kw, callbacks=[cb], distributed=True)
            name = f"{network}-{optimizer}"
            for e, ws in enumerate(kept):
                for i, w in enumerate(ws):
                    arrays[f"{name}/{e}/{i}"] = w
            info[name] = {"history": h.history, "params": h.params,
                          "stats": model.last_epoch_stats}
    _save(outdir, rank, arrays, info)


def scenario_local(rank, outdir):
    x, y = shard(rank)
    model = dense_model(OPTIMIZERS["sgd_momentum"]())
    cb, kept = weights_per_epoch(model)
    h = model.fit(x, y, epochs=2, batch_size=SHARD_BATCH, shuffle=False, verbose=0,
                  validation_data=shard_val(rank), callbacks=[cb], distributed="local")
    arrays = {f"{e}/{i}": w for e, ws in enumerate(kept) for i, w in enumerate(ws)}
    # shuffled shards: each rank its own order; the weights must still agree everywhere
    model2 = dense_model(OPTIMIZERS["adam_clipnorm"]())
    h2 = model2.fit(x, y, epochs=2, batch_size=SHARD_BATCH, seed=3, verbose=0, distributed="local")
    arrays.update({f"shuffled/{i}": w for i, w in enumerate(model2.get_weights())})
    # dead units: ReLU unit r fires on rank r's rows only, so none is dead over all the rows
    relu = cr.Sequential([L.Dense(2, activation="relu"), L.Dense(1)], dtype="float64")
    relu.compile(optimizer=cr.optimizers.SGD(0.1), loss="mse")  # the targets are met: no change
    relu.build((2,))
    relu.set_weights([np.eye(2), np.zeros(2), np.ones((2, 1)), np.zeros(1)])
    xr = np.tile([[1.0, -1.0]] if rank == 0 else [[-1.0, 1.0]], (6, 1))
    h3 = relu.fit(xr, np.ones(6), epochs=1, batch_size=4, verbose=0, distributed="local")
    from mpi4py import MPI
    _save(outdir, rank, arrays, {"history": h.history, "params": h.params,
                                 "shuffled_history": h2.history, "shuffled_params": h2.params,
                                 "thread_level": MPI.Query_thread(),
                                 "dead_fraction": h3.layer_stats[relu.layers[0].name]["dead_fraction"]})


def scenario_callbacks(rank, outdir):
    model, kw = equivalence_case("dense", "sgd_momentum")
    kw.update(epochs=8, verbose=2)
    # rank 1 alone asks to stop after the 4th epoch: every rank must stop there
    stop_on_rank1 = cr.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: setattr(model, "stop_training", True) if rank == 1 and e == 3 else None)
    checkpoint = cr.callbacks.ModelCheckpoint(os.path.join(outdir, f"ckpt-rank{rank}-{{epoch}}.crm"))
    csv_log = cr.callbacks.CSVLogger(os.path.join(outdir, f"log-rank{rank}.csv"))
    printer = cr.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: print(f"CALLBACK PRINT {e}", flush=True))
    h = model.fit(**kw, callbacks=[stop_on_rank1, checkpoint, csv_log, printer], distributed=True)
    model.save(os.path.join(outdir, f"final-rank{rank}.crm"))
    early = dense_model(cr.optimizers.SGD(0.5, momentum=0.9))  # too fast: val_loss turns up soon
    kw2 = dict(kw, verbose=0, epochs=30)
    h2 = early.fit(**{k: v for k, v in kw2.items()}, distributed=True,
                   callbacks=[cr.callbacks.EarlyStopping(monitor="val_loss", patience=1)])
    _save(outdir, rank, {"final": np.concatenate([w.ravel() for w in model.get_weights()])},
          {"history": h.history, "early_history": h2.history})


def nan_model():
    model = cr.Sequential([L.Dense(8, activation="tanh"), L.Dense(1)], dtype="float64", seed=5)
    model.compile(optimizer=cr.optimizers.SGD(0.01), loss="mse")
    model.build((6,))
    return model


def nan_shard(rank):
    """Rank 1's row 10, which it takes at the 4th step of the first epoch (rows [8, 11) of
    its 14), has a target whose squared error overflows: an infinite loss on rank 1 alone."""
    x, _ = shard(rank)
    y = np.sin(x.sum(axis=1))
    if rank == 1:
        y[10] = 1e200
    return x, y


def scenario_nan(rank, outdir):
    """stop_on_nonfinite must stop every rank at the same step, with the same weights."""
    model = nan_model()
    h = model.fit(*nan_shard(rank), epochs=3, batch_size=SHARD_BATCH, shuffle=False, verbose=0,
                  callbacks=[cr.callbacks.TerminateOnNaN()], distributed="local")
    _save(outdir, rank, {f"w{i}": w for i, w in enumerate(model.get_weights())},
          {"history": h.history, "stats": model.last_epoch_stats})


def scenario_bad_input(rank, outdir):
    x, y = data("dense", N_TRAIN, 10)
    if rank == 1:
        y = y.copy()
        y[5] = 7  # not a class of a 3-output model
    dense_model(OPTIMIZERS["sgd_momentum"]()).fit(x, y, epochs=2, batch_size=BATCH, verbose=0,
                                                   distributed=True)


def scenario_callback_error(rank, outdir):
    model, kw = equivalence_case("dense", "sgd_momentum")

    def fail(epoch, logs):
        if rank == 0 and epoch == 1:
            raise RuntimeError("a callback failed on rank 0")

    model.fit(**kw, callbacks=[cr.callbacks.LambdaCallback(on_epoch_end=fail)], distributed=True)


def scenario_long(rank, outdir):
    """Trains for far longer than any test waits: for the interrupt tests."""
    with open(os.path.join(outdir, f"pid{rank}"), "w") as f:
        f.write(str(os.getpid()))
    x, y = data("dense", 4000, 10)
    model = dense_model(OPTIMIZERS["sgd_momentum"]())
    started = cr.callbacks.LambdaCallback(  # a file, not a print: only rank 0's output is shown
        on_train_begin=lambda logs: open(os.path.join(outdir, f"started{rank}"), "w").close())
    model.fit(x, y, epochs=100000, batch_size=4, verbose=0, callbacks=[started], distributed=True)


# BatchNormalization after a frozen Dense layer: the normalized values are fixed, so the
# moving statistics depend only on which rows each rank takes (23 rows in batches of 10: the
# last step gives rank 0 one row and rank 1 two).
BN_ROWS, BN_BATCH, BN_EPOCHS, BN_MOMENTUM = 23, 10, 2, 0.9


def batchnorm_case():
    model = cr.Sequential([
        L.Dense(5, trainable=False, input_shape=(4,)),
        L.BatchNormalization(momentum=BN_MOMENTUM),
        L.Activation("relu"),
        L.Dense(3, activation="softmax"),
    ], dtype="float64", seed=5)
    model.compile(optimizer=cr.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(9)
    x = rng.standard_normal((BN_ROWS, 4)) * 3.0 + 1.0
    y = rng.integers(0, 3, BN_ROWS)
    return model, x, y


def scenario_batchnorm(rank, outdir):
    model, x, y = batchnorm_case()
    initial = model.get_weights()
    cb, kept = weights_per_epoch(model)
    h = model.fit(x, y, epochs=BN_EPOCHS, batch_size=BN_BATCH, shuffle=False, verbose=0,
                  validation_data=(x[:7], y[:7]), callbacks=[cb], distributed=True)
    arrays = {f"initial/{i}": w for i, w in enumerate(initial)}
    arrays.update({f"{e}/{i}": w for e, ws in enumerate(kept) for i, w in enumerate(ws)})
    _save(outdir, rank, arrays, {"history": h.history})


def scenario_stream(rank, outdir):
    """A generator as x (or as validation_data) with distributed=True: a ValueError on every
    rank, and the ranks still work together afterwards."""
    model, kw = equivalence_case("dense", "sgd_momentum")
    x, y = kw["x"], kw["y"]
    errors = []
    for args in (dict(x=((x[i:i + 10], y[i:i + 10]) for i in range(0, 60, 10))),
                 dict(x=x, y=y, validation_data=cr.data.Dataset(x, y, batch_size=10))):
        try:
            model.fit(**args, epochs=1, verbose=0, distributed=True)
        except ValueError as e:
            errors.append(str(e))
    h = model.fit(x, y, epochs=1, batch_size=10, verbose=0, distributed=True)
    _save(outdir, rank, {}, {"errors": errors, "loss": h.history["loss"]})


def scenario_single(rank, outdir):
    """Without mpirun: distributed=True is a plain fit."""
    assert "mpi4py" not in sys.modules
    model, kw = equivalence_case("dense", "adam_clipnorm")
    model.fit(**kw, distributed=True)
    plain, kw = equivalence_case("dense", "adam_clipnorm")
    plain.fit(**kw)
    same = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), plain.get_weights()))
    _save(outdir, rank, {}, {"same": same, "size": cr.distributed.size()})


def main():
    scenario, outdir = sys.argv[1], sys.argv[2]
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
    globals()[f"scenario_{scenario}"](rank, outdir)


if __name__ == "__main__":
    main()
