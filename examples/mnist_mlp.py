"""Train a multilayer perceptron on MNIST to >= 98% test accuracy in 10 epochs.

    python examples/mnist_mlp.py [--data DIR]

DIR holds the four standard gzipped IDX files; without --data, chainrule looks in
$CHAINRULE_MNIST_DIR, then in its cache folder, and downloads them there if missing.
"""

import argparse
import os
import time

import chainrule as cr


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder with the MNIST .gz files")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    (x_train, y_train), (x_test, y_test) = cr.datasets.load_mnist(args.data, normalize=True, flatten=True)
    model = cr.Sequential([
        cr.layers.Dense(512, activation="relu"),
        cr.layers.Dense(256, activation="relu"),
        cr.layers.Dense(10, activation="softmax"),
    ], seed=args.seed)
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
              validation_split=1 / 12, seed=args.seed, verbose=2)
    loss, acc = model.evaluate(x_test, y_test)
    print(f"{time.perf_counter() - t0:.1f} s; test loss {loss:.4f}; test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
