"""chainrule is typed (PEP 561: py.typed and inline annotations): mypy checks a small user
script against the package and sees real types, not Any. Skipped without mypy (the test extra
installs it)."""

import os
import textwrap

import pytest

import chainrule as cr

mypy_api = pytest.importorskip("mypy.api")

USER_SCRIPT = """
    import numpy as np
    import chainrule as cr

    (x_train, y_train), (x_test, y_test) = cr.datasets.load_digits()
    model = cr.Sequential([cr.layers.Dense(16, activation="relu"),
                           cr.layers.Dense(10, activation="softmax")], seed=0)
    model.compile(optimizer=cr.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0,
                        callbacks=[cr.callbacks.EarlyStopping(monitor="loss", patience=2)])
    reveal_type(cr.Sequential([cr.layers.Dense(2)]).predict(np.zeros((3, 4))))
    reveal_type(history)
    reveal_type(history.history)
    reveal_type(model.get_weights())
    reveal_type(cr.load_model)
    reveal_type(cr.optimizers.get("adam"))
    reveal_type(cr.layers.Conv2D(8, 3).get_config())
    reveal_type(cr.datasets.standardize(x_train, x_test))
    reveal_type(cr.cpu_info())
    reveal_type(cr.__version__)
"""


def _mypy(tmp_path, source):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    args = [str(script), "--no-error-summary", "--hide-error-context", "--no-color-output",
            "--cache-dir", str(tmp_path / ".mypy_cache"), "--python-executable", os.sys.executable]
    # An installed wheel is found in site-packages through its py.typed; an editable install
    # (an import hook mypy cannot follow) through MYPYPATH.
    parent = os.path.dirname(os.path.dirname(os.path.abspath(cr.__file__)))
    env_path = None
    if os.path.basename(parent) not in ("site-packages", "dist-packages"):
        env_path = parent
    old = os.environ.get("MYPYPATH")
    try:
        if env_path:
            os.environ["MYPYPATH"] = env_path
        stdout, stderr, status = mypy_api.run(args)
    finally:
        if env_path:
            if old is None:
                os.environ.pop("MYPYPATH", None)
            else:
                os.environ["MYPYPATH"] = old
    return stdout, stderr, status


def test_package_is_marked_typed():
    assert os.path.isfile(os.path.join(os.path.dirname(cr.__file__), "py.typed"))


def test_mypy_sees_the_public_api_types(tmp_path):
    out, err, status = _mypy(tmp_path, USER_SCRIPT)
    lines = [l for l in out.splitlines() if "note: Revealed type is" in l]
    # mypy writes builtins with or without the "builtins." prefix, depending on its version
    revealed = [l.split('Revealed type is "', 1)[1].rstrip('"').replace("builtins.", "") for l in lines]
    errors = [l for l in out.splitlines() if ": error:" in l]
    assert not errors and len(revealed) == 10, out + err
    predict, history, history_dict, weights, load_model, opt, config, standardized, info, version = revealed
    # predict: a numpy array of floats (float32, or float64 for a float64 model)
    assert predict.startswith("numpy.ndarray[") and "numpy.floating[" in predict, predict
    assert history == "chainrule.history.History"
    assert history_dict == "dict[str, list[float]]"
    assert weights.startswith("list[numpy.ndarray[") and "numpy.floating[" in weights
    assert load_model.endswith("-> chainrule.models.Sequential"), load_model
    assert opt == "chainrule.optimizers.Optimizer"
    assert config == "dict[str, Any]"
    assert standardized.startswith("tuple[numpy.ndarray["), standardized
    assert info == "dict[str, Any]"
    assert version == "str"


def test_mypy_flags_wrong_calls(tmp_path):
    # Typed signatures, not Any: these mistakes are caught before running anything.
    out, _, status = _mypy(tmp_path, """
        import chainrule as cr
        model = cr.Sequential([cr.layers.Dense("8")])
        model.compile(optimizer=cr.optimizers.Adam(beta_1="high"))
        model.fit([[0.0]], [0], epochs="3")
        cr.layers.Dense(8).no_such_method()
    """)
    errors = [l for l in out.splitlines() if ": error:" in l]
    assert status == 1
    assert [int(l.split(":")[1]) for l in errors] == [3, 4, 5, 6], out
