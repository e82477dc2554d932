"""Smoke test of an installed chainrule wheel, run by tools/build_wheel.sh in a fresh virtual
environment whose PATH holds only that environment's bin folder (so no compiler), from a
folder outside the source tree.

    python smoke_test.py EXPECTED_VERSION

Checks: no compiler is reachable; chainrule and its _core come from the environment's
site-packages; the version, py.typed and LICENSE are installed; the OpenMP runtime in use is
the one bundled in the wheel (chainrule.libs), not the system's, and runs 2 threads; a model
trains on the bundled digits, predicts, saves and loads; `python -m chainrule` runs.
Exits non-zero with the reason on the first failure."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile


def check(ok: object, what: str) -> None:
    if not ok:
        sys.exit(f"smoke test FAILED: {what}")
    print(f"  ok  {what}")


def main() -> int:
    expected_version = sys.argv[1]
    compilers = {c: shutil.which(c) for c in ("cc", "gcc", "g++", "c++", "clang", "clang++")}
    check(not any(compilers.values()), f"no C/C++ compiler on PATH ({os.environ.get('PATH')!r}): {compilers}")

    import chainrule as cr
    import chainrule._core as core

    site = os.path.realpath(sysconfig.get_paths()["platlib"])
    for mod in (cr, core):
        check(os.path.realpath(mod.__file__).startswith(site + os.sep),
              f"{mod.__name__} is imported from the environment's site-packages ({mod.__file__})")
    check(cr.__version__ == expected_version == importlib.metadata.version("chainrule"),
          f"chainrule.__version__ {cr.__version__!r} = metadata = wheel version {expected_version!r}")
    files = {str(f) for f in importlib.metadata.files("chainrule") or []}
    check("chainrule/py.typed" in files, "chainrule/py.typed is installed")
    check(any(f.endswith("/licenses/LICENSE") or f.endswith(".dist-info/LICENSE") for f in files),
          "the LICENSE file is in the wheel's .dist-info")

    info = cr.cpu_info()
    print(f"  cpu_info: kernel={info['kernel']} best={info['best_kernel']} openmp={info['openmp']} "
          f"max_threads={info['max_threads']}")
    check(info["openmp"], "the core is built with OpenMP")
    cr.set_num_threads(2)
    check(cr.get_num_threads() == 2, "set_num_threads(2) takes effect")
    with open("/proc/self/maps") as f:
        gomp = sorted({line.split()[-1] for line in f if "libgomp" in line})
    libs = os.path.join(site, "chainrule.libs")
    check(len(gomp) == 1 and os.path.realpath(gomp[0]).startswith(libs + os.sep),
          f"the OpenMP runtime loaded is the wheel's own ({gomp})")

    (x_train, y_train), (x_test, y_test) = cr.datasets.load_digits()
    x_train, x_test = cr.datasets.standardize(x_train, x_test)
    model = cr.Sequential([cr.layers.Dense(64, activation="relu"),
                           cr.layers.Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer=cr.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0, seed=0)
    loss, acc = model.evaluate(x_test, y_test)
    check(acc > 0.9, f"an MLP trains on the bundled digits (test accuracy {acc:.4f} > 0.9)")
    p = model.predict(x_test[:5])
    check(p.shape == (5, 10) and abs(float(p.sum()) - 5.0) < 1e-4, "predict returns softmax rows")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.crm")
        model.save(path)
        again = cr.load_model(path)
        check((again.predict(x_test[:5]) == p).all(), "save / load_model round-trips the predictions")

    run = subprocess.run([sys.executable, "-m", "chainrule", "--epochs", "2"], capture_output=True,
                         text=True, timeout=300)
    check(run.returncode == 0 and "test accuracy" in run.stdout,
          f"python -m chainrule --epochs 2 runs (exit {run.returncode}){run.stderr[-2000:]}")
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
