"""chainrule.sklearn: scikit-learn's estimator checks, the sklearn tools (Pipeline,
GridSearchCV, cross_val_score, clone, pickle), the fitted attributes, and the adapter's
equivalence with a hand-written chainrule.Sequential fit."""

import copy
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_blobs, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import chainrule as cr  # noqa: E402
from chainrule.sklearn import MLPClassifier, MLPRegressor, l2_factor  # noqa: E402

_SKLEARN_TWIN = {MLPClassifier: neural_network.MLPClassifier, MLPRegressor: neural_network.MLPRegressor}


def _declared_failures(estimator):
    """The expected failures scikit-learn declares for its own MLPClassifier/MLPRegressor
    (none in 1.9), so ours are held to exactly the same standard."""
    try:
        from sklearn.utils._test_common.instance_generator import _get_expected_failed_checks
    except ImportError:  # a private module; without it, no expected failures at all
        return {}
    return dict(_get_expected_failed_checks(_SKLEARN_TWIN[type(estimator)]()))


# The instances scikit-learn's own test suite checks its MLPs with: default parameters but
# max_iter=100 (sklearn/utils/_test_common/instance_generator.py).
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)],
                         expected_failed_checks=_declared_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _blobs(n=300, seed=0):
    X, y = make_blobs(n_samples=n, centers=3, n_features=4, random_state=seed)
    return StandardScaler().fit_transform(X), y


def test_import_chainrule_does_not_import_sklearn():
    code = ("import sys, chainrule\n"
            "assert 'sklearn' not in sys.modules and 'chainrule.sklearn' not in sys.modules\n"
            "from chainrule.sklearn import MLPClassifier\n"
            "assert chainrule.sklearn.MLPClassifier is MLPClassifier and 'sklearn' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_defaults_are_sklearn_defaults():
    ours, theirs = MLPClassifier().get_params(), neural_network.MLPClassifier().get_params()
    shared = set(ours) & set(theirs)
    assert shared >= {"hidden_layer_sizes", "activation", "solver", "alpha", "batch_size",
                      "learning_rate", "learning_rate_init", "power_t", "max_iter", "shuffle",
                      "random_state", "tol", "verbose", "warm_start", "momentum",
                      "nesterovs_momentum", "early_stopping", "validation_fraction", "beta_1",
                      "beta_2", "epsilon", "n_iter_no_change"}
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}
    assert set(ours) - set(theirs) == {"clipnorm", "clipvalue", "weight_decay", "dtype", "n_threads"}


def test_digits_pipeline_accuracy():
    (x_train, y_train), (x_test, y_test) = cr.datasets.load_digits()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=60,
                                                         random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(x_train, y_train)
    clf = pipe[-1]
    assert clf.model_.dtype == "float32"  # float32 data (kept by StandardScaler): a float32 model
    assert list(clf.classes_) == list(range(10)) and clf.n_features_in_ == 64
    assert pipe.score(x_test, y_test) > 0.95
    proba = pipe.predict_proba(x_test)
    assert proba.shape == (len(x_test), 10) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pipe.predict(x_test))


def test_grid_search_in_processes_and_cross_val_score():
    X, y = _blobs(240)
    grid = GridSearchCV(MLPClassifier(max_iter=40, learning_rate_init=0.01, random_state=0),
                        {"hidden_layer_sizes": [(8,), (32,)], "alpha": [1e-4, 1e-2]}, cv=3, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert grid.best_score_ > 0.9
    assert set(grid.best_params_) == {"hidden_layer_sizes", "alpha"}
    assert grid.best_estimator_.score(X, y) > 0.9

    Xr, yr = make_regression(n_samples=300, n_features=5, noise=5.0, random_state=0)
    reg = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01,
                                                       max_iter=300, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(reg, Xr, yr / yr.std(), cv=3)
    assert scores.shape == (3,) and scores.min() > 0.9


def test_string_labels_binary_and_multiclass():
    X, y = _blobs()
    names = np.array(["cat", "dog", "emu"])[y]
    kw = dict(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=100, tol=1e-3, random_state=0)
    clf = MLPClassifier(**kw).fit(X, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"] and clf.out_activation_ == "softmax"
    pred = clf.predict(X)
    assert pred.dtype == names.dtype and (pred == names).mean() > 0.9

    mask = names != "emu"
    clf2 = MLPClassifier(**kw).fit(X[mask], names[mask])
    assert list(clf2.classes_) == ["cat", "dog"] and clf2.out_activation_ == "logistic"
    assert clf2.n_outputs_ == 1 and clf2.coefs_[-1].shape == (16, 1)
    proba = clf2.predict_proba(X[mask])
    assert proba.shape == (mask.sum(), 2)
    np.testing.assert_array_equal(clf2.classes_[proba.argmax(axis=1)], clf2.predict(X[mask]))
    assert clf2.score(X[mask], names[mask]) > 0.95


def test_multilabel_classification():
    X, Y = make_multilabel_classification(n_samples=300, n_features=8, n_classes=4, random_state=0)
    X = StandardScaler().fit_transform(X)
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, Y)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 4
    assert clf.model_.loss == "binary_crossentropy"
    pred = clf.predict(X)
    assert pred.shape == Y.shape and pred.dtype == Y.dtype
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(Y.dtype))
    assert (pred == Y).mean() > 0.9  # scikit-learn's MLPClassifier: 0.93 with these settings


def test_multi_output_regression():
    X, Y = make_regression(n_samples=300, n_features=6, n_targets=3, noise=1.0, random_state=0)
    X = StandardScaler().fit_transform(X)
    Y = Y / Y.std(axis=0)
    reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, Y)
    assert reg.n_outputs_ == 3 and reg.out_activation_ == "identity"
    pred = reg.predict(X)
    assert pred.shape == Y.shape and pred.dtype == np.float64
    assert reg.score(X, Y) > 0.95
    single = MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert single.fit(X, Y[:, 0]).predict(X).shape == (300,)


def _fixed_epochs(est, epochs):
    """Settings under which fit runs exactly ``epochs`` epochs (no convergence stop)."""
    return est.set_params(max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1)


def test_fit_equals_hand_written_sequential_classifier():
    X, y = _blobs(150)
    est = _fixed_epochs(MLPClassifier(hidden_layer_sizes=(12, 7), activation="tanh", alpha=0.01,
                                      batch_size=32, learning_rate_init=0.01, random_state=5,
                                      clipnorm=1.0), 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)

    l2 = l2_factor(0.01, 32, "sparse_categorical_crossentropy", 3)
    assert l2 == 0.01 / (2 * 32)
    model = cr.Sequential([cr.layers.Dense(12, activation="tanh", kernel_regularizer=cr.regularizers.L2(l2)),
                           cr.layers.Dense(7, activation="tanh", kernel_regularizer=cr.regularizers.L2(l2)),
                           cr.layers.Dense(3, activation="softmax", kernel_regularizer=cr.regularizers.L2(l2))],
                          dtype="float64", seed=5)
    model.compile(optimizer=cr.optimizers.Adam(0.01, clipnorm=1.0), loss="sparse_categorical_crossentropy")
    history = model.fit(X, y, epochs=6, batch_size=32, seed=5, verbose=0)

    assert est.n_iter_ == 6 and est.t_ == 6 * 150
    for a, b in zip(est.model_.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert est.loss_curve_ == history.history["loss"]
    assert list(est.gradient_stats_.values()) == list(history.layer_stats.values())
    assert list(est.gradient_stats_) == ["hidden_1", "hidden_2", "output"]
    np.testing.assert_array_equal(est.predict_proba(X), model.predict(X))
    assert [c.shape for c in est.coefs_] == [(4, 12), (12, 7), (7, 3)]
    assert [b.shape for b in est.intercepts_] == [(12,), (7,), (3,)]
    assert est.n_layers_ == 4


def test_fit_equals_hand_written_sequential_regressor_sgd():
    X, y = make_regression(n_samples=90, n_features=3, noise=0.5, random_state=1)
    y = y / y.std()
    est = _fixed_epochs(MLPRegressor(hidden_layer_sizes=(10,), solver="sgd", momentum=0.8,
                                     learning_rate_init=0.01, alpha=0.001, batch_size=20,
                                     random_state=11, dtype="float32"), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)

    l2 = 0.001 / 20  # mean squared error, one output: alpha / (2 B * 1/2)
    assert l2_factor(0.001, 20, "mean_squared_error", 1) == pytest.approx(l2)
    model = cr.Sequential([cr.layers.Dense(10, activation="relu", kernel_regularizer=cr.regularizers.L2(l2)),
                           cr.layers.Dense(1, kernel_regularizer=cr.regularizers.L2(l2))], seed=11)
    model.compile(optimizer=cr.optimizers.SGD(0.01, momentum=0.8, nesterov=True), loss="mse")
    history = model.fit(X, y, epochs=5, batch_size=20, seed=11, verbose=0)
    for a, b in zip(est.model_.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert est.loss_curve_ == history.history["loss"]
    np.testing.assert_array_equal(est.predict(X), model.predict(X)[:, 0])


def test_partial_fit_continues_like_fit():
    X, y = _blobs(120)
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier().partial_fit(X, y)
    params = dict(hidden_layer_sizes=(16,), batch_size=25, random_state=2)
    inc = MLPClassifier(**params)
    for _ in range(4):
        inc.partial_fit(X, y, classes=[0, 1, 2])
        assert inc.n_iter_ == 1
    full = _fixed_epochs(MLPClassifier(**params), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full.fit(X, y)
    # one epoch per call, continuing the optimizer state and the epoch sequence
    assert len(inc.loss_curve_) == 4 and inc.t_ == 4 * 120
    for a, b in zip(inc.model_.get_weights(), full.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert inc.loss_curve_ == full.loss_curve_

    # a later batch may lack classes; unknown ones are refused
    inc.partial_fit(X[y == 0], y[y == 0])
    with pytest.raises(ValueError, match="classes not in"):
        inc.partial_fit(X, y + 1)
    with pytest.raises(ValueError, match="features"):
        inc.partial_fit(X[:, :3], y)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])

    reg = MLPRegressor(hidden_layer_sizes=(8,), random_state=0)
    for _ in range(3):
        reg.partial_fit(X, X[:, 0])
    assert len(reg.loss_curve_) == 3 and reg.n_iter_ == 1


def test_warm_start_keeps_the_weights():
    X, y = _blobs(150)
    est = _fixed_epochs(MLPClassifier(hidden_layer_sizes=(16,), warm_start=True, random_state=0), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
        first = est.model_
        w5 = est.model_.get_weights()
        loss5 = list(est.loss_curve_)
        est.fit(X, y)
    assert est.model_ is first and est.n_iter_ == 5
    assert len(est.loss_curve_) == 10 and est.loss_curve_[:5] == loss5
    assert est.loss_curve_[5] < loss5[0]  # continued from trained weights, not a fresh start
    assert est.t_ == 10 * 150 and len(est.gradient_stats_["output"]["kernel_grad_norm"]) == 10
    assert any(not np.array_equal(a, b) for a, b in zip(w5, est.model_.get_weights()))

    cold = clone(est).set_params(warm_start=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold.fit(X, y)
        cold.fit(X, y)
    assert len(cold.loss_curve_) == 5
    with pytest.raises(ValueError, match="same classes"):
        est.fit(X[y < 2], y[y < 2])


def test_early_stopping_keeps_the_best_validation_weights():
    X, y = _blobs(400, seed=3)
    est = MLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, validation_fraction=0.2,
                        n_iter_no_change=3, max_iter=200, learning_rate_init=0.01, random_state=4)
    est.fit(X, y)
    assert est.best_loss_ is None
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_) < 200
    assert est.best_validation_score_ == max(scores)
    # the stopping rule: the last n_iter_no_change + 1 epochs did not beat the best by tol
    best_epoch = int(np.argmax(scores))
    assert est.n_iter_ - 1 - best_epoch > 3 - 1
    # the validation split (stratified, from random_state) scores the restored best weights
    _, X_val, _, y_val = train_test_split(X, y, random_state=4, test_size=0.2, stratify=y)
    assert est.score(X_val, y_val) == est.best_validation_score_

    reg = MLPRegressor(hidden_layer_sizes=(16,), early_stopping=True, random_state=0,
                       learning_rate_init=0.01, max_iter=300)
    reg.fit(X, X[:, 0] - X[:, 1])
    assert reg.best_validation_score_ == max(reg.validation_scores_) > 0.9


def test_convergence_rule_and_warning():
    X, y = _blobs(150)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
    # a tol no epoch can meet: the first epoch improves on inf, the next n_iter_no_change + 1
    # do not, and training stops there without a warning, as in scikit-learn's MLPClassifier
    params = dict(hidden_layer_sizes=(8,), tol=100.0, n_iter_no_change=4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = MLPClassifier(**params).fit(X, y)
        theirs = neural_network.MLPClassifier(**params).fit(X, y)
    assert est.n_iter_ == theirs.n_iter_ == 6
    assert est.best_loss_ == min(est.loss_curve_) and len(est.loss_curve_) == 6


def test_sgd_learning_rate_schedules():
    X, y = _blobs(100)
    est = _fixed_epochs(MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="invscaling",
                                      power_t=0.5, random_state=0), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    # scikit-learn's: learning_rate_init / (t_ + 1) ** power_t after each epoch
    assert est.model_.lr_scale == pytest.approx(1.0 / (300 + 1) ** 0.5)
    adaptive = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive", tol=100.0,
                             n_iter_no_change=1, max_iter=9, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        adaptive.fit(X, y)
    # every second epoch fails to improve by tol: the rate is divided by 5 each time
    assert adaptive.model_.lr_scale == pytest.approx(0.2 ** 4)


def test_clone_pickle_and_deepcopy():
    X, y = _blobs(120)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0, n_threads=1, clipnorm=2.0)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and not hasattr(twin, "model_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert not hasattr(clone(est), "model_")
    for copied in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        np.testing.assert_array_equal(copied.predict_proba(X), est.predict_proba(X))
        assert copied.loss_curve_ == est.loss_curve_ and copied.gradient_stats_ == est.gradient_stats_
        before = est.model_.get_weights()
        copied.partial_fit(X, y)  # the copy trains on, independently
        assert len(copied.loss_curve_) == len(est.loss_curve_) + 1
        for a, b in zip(before, est.model_.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_sample_weight():
    X, y = _blobs(60)
    sw = np.random.default_rng(0).integers(0, 4, size=60)
    kw = dict(hidden_layer_sizes=(8,), random_state=0, max_iter=30)  # one batch: weights == repeats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
        repeated = MLPClassifier(**kw).fit(np.repeat(X, sw, axis=0), np.repeat(y, sw))
        unit = MLPClassifier(**kw).fit(X, y, sample_weight=np.ones(60))
        plain = MLPClassifier(**kw).fit(X, y)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(unit.predict_proba(X), plain.predict_proba(X))
    with pytest.raises(ValueError, match="non-zero"):
        MLPClassifier().fit(X, y, sample_weight=np.zeros(60))
    with pytest.raises(ValueError, match="Negative"):
        MLPClassifier().fit(X, y, sample_weight=-np.ones(60))
    with pytest.raises(ValueError, match="shape"):
        MLPClassifier().fit(X, y, sample_weight=np.ones(59))


def test_n_threads_is_restored():
    X, y = _blobs(100)
    before = cr.get_num_threads()
    cr.set_num_threads(1)
    try:
        est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, n_threads=2, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
        est.predict(X)
        assert cr.get_num_threads() == 1
    finally:
        cr.set_num_threads(before)


@pytest.mark.parametrize("params, error, match", [
    ({"solver": "lbfgs"}, ValueError, "lbfgs"),
    ({"solver": "newton"}, ValueError, "solver"),
    ({"activation": "softmax"}, ValueError, "activation"),
    ({"hidden_layer_sizes": (10, 0)}, ValueError, "hidden_layer_sizes"),
    ({"hidden_layer_sizes": "10"}, ValueError, "hidden_layer_sizes"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"alpha": "big"}, TypeError, "alpha"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": "all"}, ValueError, "batch_size"),
    ({"learning_rate": "cosine"}, ValueError, "learning_rate"),
    ({"learning_rate_init": 0.0}, ValueError, "learning_rate_init"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"momentum": 1.5}, ValueError, "momentum"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ({"beta_2": 1.0}, ValueError, "beta_2"),
    ({"n_iter_no_change": 0}, ValueError, "n_iter_no_change"),
    ({"clipnorm": 0.0}, ValueError, "clipnorm"),
    ({"n_threads": 0}, ValueError, "n_threads"),
    ({"n_threads": 2.5}, TypeError, "n_threads"),
    ({"dtype": "float16"}, ValueError, "dtype"),
    ({"shuffle": 1}, TypeError, "shuffle"),
])
def test_bad_parameters_are_named(params, error, match):
    X, y = _blobs(30)
    with pytest.raises(error, match=match):
        MLPClassifier(**params).fit(X, y)


def test_one_class_and_sparse_input_are_refused():
    X, y = _blobs(30)
    with pytest.raises(ValueError, match="1 class"):
        MLPClassifier().fit(X, np.zeros(30))
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="dense data is required"):
        MLPClassifier().fit(scipy_sparse.csr_matrix(X), y)


def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    X, y = _blobs(60)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(frame, y)
    assert list(est.feature_names_in_) == ["a", "b", "c", "d"]
