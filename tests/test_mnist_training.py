"""End to end on the real MNIST files: a 784-256-10 ReLU/softmax MLP trained with SGD and
momentum reaches >= 97% test accuracy in a few epochs. Skipped (with the reason) when the
files are absent. Not a benchmark: the time is printed, never asserted."""

import time

import numpy as np
import pytest

import chainrule as cr


def test_mlp_reaches_97_percent_on_mnist(mnist_dir):
    (x_train, y_train), (x_test, y_test) = cr.datasets.load_mnist(
        mnist_dir, download=False, normalize=True, flatten=True)
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert set(np.unique(y_train)) == set(range(10))

    model = cr.Sequential([cr.layers.Dense(256, activation="relu"),
                           cr.layers.Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    untrained_loss, untrained_acc = model.evaluate(x_test, y_test)
    assert untrained_acc < 0.3

    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=6, batch_size=64, seed=0, verbose=0,
                        validation_data=(x_test, y_test))
    elapsed = time.perf_counter() - t0

    test_loss, test_acc = model.evaluate(x_test, y_test)
    print(f"MNIST 784-256-10: test accuracy {test_acc:.4f}, loss {test_loss:.4f}, fit {elapsed:.1f}s")
    assert test_acc >= 0.97
    assert test_loss < untrained_loss / 10
    assert history.history["val_accuracy"][-1] == pytest.approx(test_acc)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # the reported accuracy agrees with the predictions themselves
    pred = model.predict(x_test).argmax(axis=1)
    assert np.mean(pred == y_test) == pytest.approx(test_acc)
