"""LeNet-style convolutional network on MNIST with chainrule (target: >= 99.0% test accuracy).

    python examples/mnist_cnn.py [--data DIR] [--epochs 6] [--threads N]

Uses the installed chainrule (`pip install .` from the repository root first). DIR holds the
four standard gzipped IDX files; without --data, chainrule looks in $CHAINRULE_MNIST_DIR, then
in its cache folder, and downloads them there if missing (as examples/mnist_mlp.py).
Images stay (28, 28): a Conv2D first layer reads them as one channel. Training uses 60,000
images; accuracy is measured on the 10,000 test images.
"""

from __future__ import annotations

import argparse
import sys
import time

import chainrule as cr
from chainrule.datasets import load_mnist
from chainrule.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from chainrule.optimizers import SGD


def build(seed):
    model = cr.Sequential([
        Conv2D(16, 5, activation="relu", input_shape=(28, 28)),   # -> (24, 24, 16)
        MaxPooling2D(2),                                           # -> (12, 12, 16)
        Conv2D(32, 5, activation="relu"),                          # -> (8, 8, 32)
        MaxPooling2D(2),                                           # -> (4, 4, 32)
        Flatten(),                                                 # -> (512,)
        Dense(128, activation="relu"),
        Dropout(0.3),
        Dense(10, activation="softmax"),
    ], name="lenet", seed=seed)
    model.compile(optimizer=SGD(0.03, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="folder with the MNIST .gz files")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        cr.set_num_threads(args.threads)

    (x_train, y_train), (x_test, y_test) = load_mnist(args.data, normalize=True)
    model = build(args.seed)
    model.build(x_train.shape[1:])
    model.summary()
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=2, seed=args.seed)
    train_s = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test)
    print(f"test accuracy {acc:.4f}  test loss {loss:.4f}  training time {train_s:.1f} s "
          f"({train_s / args.epochs:.2f} s/epoch, {cr.get_num_threads()} threads)")
    return 0 if acc >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
