"""`python -m chainrule`: a first run of chainrule. Trains a small fully connected network on
the handwritten digits bundled with the package (no download) and says what it does on the
way: the version, the CPU kernel and thread count in use, the data, one line per epoch, and the
final test accuracy, followed by what to try next. `mpirun -n K python -m chainrule
--distributed` trains the same model data-parallel over K processes (chainrule[mpi]); rank 0
prints."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

import chainrule as cr

DESCRIPTION = """\
Train a small neural network on handwritten digits, as a first run of chainrule.

The data are the 1,797 8x8-pixel handwritten digits (UCI optdigits) that come with
chainrule: 1,437 images to learn from (10% of them held back to watch the accuracy on
data the model does not train on, "validation") and 360 test images used once, at the end.
The network is a multilayer perceptron, 64 inputs -> 256 ReLU units -> 10 softmax outputs,
trained by backpropagation with SGD and momentum. With the defaults it takes seconds
and reaches about 97-98% test accuracy."""

EPILOG = """\
examples:
  python -m chainrule                      train with the defaults (30 epochs)
  python -m chainrule --epochs 5           a shorter run
  python -m chainrule --learning-rate 0.1  see what a too-large step does
  python -m chainrule --threads 1          compare speed with one thread
  mpirun -n 2 python -m chainrule --distributed
                                           data-parallel over 2 MPI processes (chainrule[mpi])
  CHAINRULE_CPU_TARGET=generic python -m chainrule
                                           run the portable kernels instead of AVX2/AVX-512"""


VALIDATION_SPLIT = 0.1


def _argument(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then require ``ok``; else say what was expected."""
    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = _argument(int, lambda v: v >= 1, "a positive integer")
_positive_float = _argument(float, lambda v: v > 0 and bool(np.isfinite(v)), "a positive number")
_non_negative_int = _argument(int, lambda v: v >= 0, "an integer >= 0")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chainrule", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=_positive_int, default=30, metavar="N",
                   help="passes over the training images (default: 30)")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                   help="images per gradient step (default: 32)")
    p.add_argument("--learning-rate", type=_positive_float, default=0.01, metavar="LR",
                   help="SGD step size (default: 0.01)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads for the C++ core (default: OpenMP's, usually one per CPU core)")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                   help="seed of the initial weights and the shuffling (default: 0)")
    p.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the processes of an MPI job "
                        "(mpirun -n K python -m chainrule --distributed; needs chainrule[mpi])")
    p.add_argument("--version", action="version",
                   version=f"chainrule {cr.__version__} (Python {platform.python_version()}, numpy {np.__version__})")
    return p


def _kernel_line(info: dict[str, Any]) -> str:
    kernel, best = info["kernel"], info["best_kernel"]
    if info.get("env_override"):
        why = f"CHAINRULE_CPU_TARGET={info['env_override']}; this CPU runs up to {best}"
    elif kernel == "generic" and not info.get("x86"):
        why = "portable C++ kernels, built for this CPU architecture"
    else:
        why = "the best this CPU runs"
    return f"CPU kernel: {kernel} ({why})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads > cr.system.MAX_THREADS:
            parser.error(f"argument --threads: at most {cr.system.MAX_THREADS} on this machine, got {args.threads}")
        cr.set_num_threads(args.threads)
    ranks, rank = 1, 0
    if args.distributed:
        from chainrule import distributed
        ranks, rank = distributed.size(), distributed.rank()

    def say(*text: object) -> None:
        if rank == 0:
            print(*text, flush=True)

    info = cr.cpu_info()
    say(f"chainrule {cr.__version__} - backpropagation on CPUs "
        f"(Python {platform.python_version()}, numpy {np.__version__})")
    say(_kernel_line(info))
    threads = cr.get_num_threads()
    say(f"threads: {threads}" + (" (OpenMP)" if info["openmp"] else " (built without OpenMP)"))

    (x_train, y_train), (x_test, y_test) = cr.datasets.load_digits()
    # Zero mean and unit variance per pixel, with statistics from the training images only:
    # keeps the first layer's pre-activations in a range where backprop works well.
    x_train, x_test = cr.datasets.standardize(x_train, x_test)
    n_val = len(x_train) - int(len(x_train) * (1.0 - VALIDATION_SPLIT))  # as fit splits
    say(f"data: UCI handwritten digits (bundled), 8x8 pixels, 10 classes: "
        f"{len(x_train) - n_val} training, {n_val} validation and {len(x_test)} test images")
    if args.distributed:
        say(f"data-parallel training over {ranks} MPI process{'es' if ranks > 1 else ''}: each step's "
            f"batch of {args.batch_size} split across them")

    model = cr.Sequential([cr.layers.Dense(256, activation="relu"),
                           cr.layers.Dense(10, activation="softmax")], seed=args.seed)
    model.compile(optimizer=cr.optimizers.SGD(learning_rate=args.learning_rate, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(x_train.shape[1:])
    say(f"model: 64 -> Dense(256, relu) -> Dense(10, softmax), {model.count_params():,} weights; "
        f"SGD(learning_rate={args.learning_rate:g}, momentum=0.9), batches of {args.batch_size}")
    say(f"training for {args.epochs} epoch{'s' if args.epochs != 1 else ''}:")

    width = len(str(args.epochs))
    started: list[float] = []

    def epoch_begin(epoch: int, logs: dict[str, float] | None) -> None:
        started.append(time.perf_counter())

    def epoch_end(epoch: int, logs: dict[str, float] | None) -> None:
        logs = logs or {}
        say(f"  epoch {epoch + 1:>{width}}/{args.epochs}  loss {logs['loss']:.4f}  "
            f"accuracy {logs['accuracy']:.4f}  val_accuracy {logs['val_accuracy']:.4f}  "
            f"({time.perf_counter() - started[-1]:.2f} s)")
        sys.stdout.flush()

    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
              validation_split=VALIDATION_SPLIT, seed=args.seed, verbose=0, distributed=args.distributed,
              callbacks=[cr.callbacks.LambdaCallback(on_epoch_begin=epoch_begin, on_epoch_end=epoch_end)])
    elapsed = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test)  # after a distributed fit every rank holds the same weights
    where = f" on {ranks} ranks" if args.distributed else ""
    say(f"test accuracy: {acc:.4f} (loss {loss:.4f}) on the {len(x_test)} test images, "
        f"after {elapsed:.2f} s of training{where}")
    say("")
    say("what to try next:")
    if acc < 0.95:
        say("  - this run stopped short of ~97%: try more epochs (--epochs 30) or another --learning-rate")
    say("  - python -m chainrule --help: the options of this run")
    say("  - your own data: the Example in chainrule's README (Sequential, compile, fit, evaluate, predict)")
    say("  - MNIST (60,000 28x28 digits): cr.datasets.load_mnist(); a CNN with cr.layers.Conv2D")
    say("  - watch backprop itself: model.trace(x[:2], y[:2]) and cr.gradient_check(model, x, y)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
