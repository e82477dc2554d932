"""The main job: `python -m chainrule` trains an MLP on the bundled UCI handwritten digits
(8x8, 1,797 images) and prints per-epoch loss and accuracy and the final test accuracy.
No network access needed. `mpirun -n K python -m chainrule --distributed` trains the same
model data-parallel over K processes (chainrule[mpi]); rank 0 prints."""

from __future__ import annotations

import argparse
import time

import chainrule as cr


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m chainrule", description=__doc__)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the processes of an MPI job "
                        "(mpirun -n K python -m chainrule --distributed; needs chainrule[mpi])")
    args = p.parse_args(argv)
    ranks, rank = 1, 0
    if args.distributed:
        from chainrule import distributed
        ranks, rank = distributed.size(), distributed.rank()

    def say(*text):
        if rank == 0:
            print(*text, flush=True)

    (x_train, y_train), (x_test, y_test) = cr.datasets.load_digits()
    say(f"UCI optdigits: {len(x_train)} training and {len(x_test)} test images of 8x8 pixels")
    if args.distributed:
        say(f"data-parallel training over {ranks} MPI process{'es' if ranks > 1 else ''}: each step's "
            f"batch of {args.batch_size} split across them")
    # Normalised inputs (zero mean, unit variance per pixel, statistics from the training set
    # only) keep the first layer's pre-activations in a range where backprop works well.
    x_train, x_test = cr.datasets.standardize(x_train, x_test)
    model = cr.Sequential([
        cr.layers.Dense(256, activation="relu"),
        cr.layers.Dense(10, activation="softmax"),
    ], seed=args.seed)
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=args.learning_rate, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(x_train.shape[1:])
    model.summary(print_fn=say)
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
              validation_split=0.1, seed=args.seed, verbose=2, distributed=args.distributed)
    elapsed = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test)  # every rank holds the same weights
    where = f" on {ranks} ranks" if args.distributed else ""
    say(f"trained in {elapsed:.2f} s{where}; test loss {loss:.4f}, test accuracy {acc:.4f}")
    return 0 if acc >= 0.97 else 1


if __name__ == "__main__":
    raise SystemExit(main())
