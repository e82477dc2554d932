"""BatchNormalization on MNIST: the LeNet-style network of mnist_cnn.py, and the same network
with BatchNormalization after each convolution and the hidden Dense layer (linear layer,
BatchNormalization, then Activation("relu"), the usual Keras arrangement), trained with the
same optimizer, learning rate, batch size and seed. The test accuracy is measured
``--evals-per-epoch`` times per epoch (each epoch is one pass over the shuffled training set,
trained in that many parts); prints it and the number of epochs each network needs to reach
99%.

    python examples/mnist_cnn_batchnorm.py [--model both|bn|plain]
        [--lr 0.1] [--max-epochs 8] [--evals-per-epoch 4] [--train-samples 60000]
        [--data DIR] [--threads N]

BatchNormalization's gain is the learning rate it tolerates: at the default --lr 0.1 the
network with it reached 99% after 2 epochs and the one without did not within 6 (it stays
near 98%); at 0.03, the plain network's best rate, the plain one was as fast (2 epochs, 2.5
with BatchNormalization). bench/RESULTS.md has the whole measurement.

Uses the installed chainrule (`pip install .` first); the MNIST files are found as in
mnist_cnn.py. ``--train-samples`` trains on the first n
training images (the test accuracy is always measured on all 10,000 test images). Exits 0
when the BatchNormalization network reaches 99% in fewer epochs than the plain one (or, with
one --model, when that network reaches 99%).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import chainrule as cr
from chainrule.datasets import load_mnist
from chainrule.layers import (Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input,
                              MaxPooling2D)
from chainrule.optimizers import SGD

TARGET = 0.99


def build(batchnorm, seed, lr):
    """LeNet (mnist_cnn.py's); with ``batchnorm`` each hidden layer is linear, then
    BatchNormalization, then the ReLU."""
    def block(make):  # make(activation) -> the layer
        if batchnorm:
            return [make(None), BatchNormalization(), Activation("relu")]
        return [make("relu")]

    layers = [Input(shape=(28, 28)),
              *block(lambda a: Conv2D(16, 5, activation=a, kernel_initializer="he_normal")),  # (24, 24, 16)
              MaxPooling2D(2),                                                                # (12, 12, 16)
              *block(lambda a: Conv2D(32, 5, activation=a, kernel_initializer="he_normal")),  # (8, 8, 32)
              MaxPooling2D(2),                                                                # (4, 4, 32)
              Flatten(),                                                                      # (512,)
              *block(lambda a: Dense(128, activation=a, kernel_initializer="he_normal")),
              Dropout(0.3),
              Dense(10, activation="softmax")]
    model = cr.Sequential(layers, name="lenet_bn" if batchnorm else "lenet", seed=seed)
    model.compile(optimizer=SGD(lr, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def run(batchnorm, data, args):
    """Trains until the test accuracy reaches TARGET, measured ``--evals-per-epoch`` times
    per epoch; returns the (fractional) number of epochs it took, or None."""
    (x_train, y_train), (x_test, y_test) = data
    model = build(batchnorm, args.seed, args.lr)
    model.summary()
    n, k = len(x_train), args.evals_per_epoch
    rng = np.random.default_rng(args.seed)
    curve, reached = [], None
    t0 = time.perf_counter()
    for epoch in range(args.max_epochs):
        order = rng.permutation(n)  # one pass over the data per epoch, in k parts
        for part in range(k):
            idx = order[part * n // k:(part + 1) * n // k]
            model.fit(x_train[idx], y_train[idx], epochs=1, batch_size=args.batch_size, shuffle=False, verbose=0,
                      seed=args.seed * 1_000_003 + epoch * k + part)
            acc = model.evaluate(x_test, y_test)[1]
            curve.append((epoch + (part + 1) / k, acc))
            print(f"{model.name}: epoch {epoch + (part + 1) / k:.2f}  test accuracy {acc:.4f}", flush=True)
            if acc >= TARGET:
                reached = epoch + (part + 1) / k
                break
        if reached is not None:
            break
    seconds = time.perf_counter() - t0
    print(f"{model.name}: " + (f"{TARGET:.0%} reached after {reached:g} epochs" if reached is not None
                               else f"{TARGET:.0%} not reached in {args.max_epochs} epochs")
          + f" ({seconds:.0f} s, test evaluations included)", flush=True)
    return reached


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="folder with the MNIST .gz files (default: "
                    "$CHAINRULE_MNIST_DIR, then chainrule's cache folder, downloading if missing)")
    ap.add_argument("--model", choices=("both", "bn", "plain"), default="both")
    ap.add_argument("--max-epochs", type=int, default=8)
    ap.add_argument("--train-samples", type=int, default=60000)
    ap.add_argument("--evals-per-epoch", type=int, default=4, help="test evaluations per epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (momentum 0.9), both networks")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        cr.set_num_threads(args.threads)

    (x_train, y_train), test = load_mnist(args.data, normalize=True)
    data = ((x_train[:args.train_samples], y_train[:args.train_samples]), test)
    reached = {}
    for name in (("bn", "plain") if args.model == "both" else (args.model,)):
        reached[name] = run(name == "bn", data, args)
    if args.model == "both":
        print(f"epochs to {TARGET:.0%} test accuracy (lr {args.lr:g}): with BatchNormalization {reached['bn']}, "
              f"without {reached['plain']} (None: not within {args.max_epochs})")
        bn, plain = reached["bn"], reached["plain"]
        return 0 if bn is not None and (plain is None or bn < plain) else 1
    return 0 if next(iter(reached.values())) is not None else 1


if __name__ == "__main__":
    sys.exit(main())
