"""scikit-learn estimators over chainrule: ``MLPClassifier`` and ``MLPRegressor``.

Drop-in counterparts of ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor`` (same
parameters, defaults, fitted attributes and stopping rule) that train a
:class:`chainrule.Sequential` of Dense layers with ``Sequential.fit``: one C++ call per
epoch; this module only converts the data, builds and compiles the model, and applies
scikit-learn's convergence test between epochs (a callback). The fitted model is
``model_``. Needs scikit-learn (``pip install chainrule[sklearn]``); ``import chainrule``
does not import this module or scikit-learn.

Where chainrule differs from scikit-learn's MLPs:

- the hidden layers' weights start from chainrule's initializers (He normal for the ReLU
  family, Glorot uniform otherwise; zero biases);
- ``solver='lbfgs'`` does not exist; 'adamw', 'rmsprop' and 'adagrad' do;
- ``dtype=None`` computes in float32 when X is float32 and in float64 otherwise, as
  scikit-learn does; ``dtype='float32'`` is faster for float64 data;
- ``loss_curve_`` holds chainrule's loss (the L2 penalty included), which averages over
  the outputs: mean squared error without scikit-learn's factor 1/2, binary cross-entropy
  averaged over the labels. ``alpha`` is converted so that the minimised objective is
  scikit-learn's (see ``l2_factor``);
- sparse X is refused (the core takes dense arrays): densify it first.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from . import callbacks as _callbacks
from . import layers as _layers
from . import optimizers as _optimizers
from . import regularizers as _regularizers
from .models import Sequential
from .system import MAX_THREADS, get_num_threads, set_num_threads

__all__ = ["MLPClassifier", "MLPRegressor", "l2_factor"]

# scikit-learn's activation names, and chainrule's, as chainrule names.
_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                "linear": "linear", "sigmoid": "sigmoid", "leaky_relu": "leaky_relu"}
_SOLVERS = ("adam", "sgd", "adamw", "rmsprop", "adagrad")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
# 'adaptive' divides the rate by 5 after n_iter_no_change epochs without improvement and
# stops once it is at most this (scikit-learn's SGDOptimizer).
_ADAPTIVE_MIN_LR = 1e-6


def l2_factor(alpha, batch_size, loss, n_outputs, mean_sample_weight=1.0):
    """The ``kernel_regularizer`` L2 factor that gives scikit-learn's objective for ``alpha``.

    scikit-learn's MLPs minimise, per batch of B samples, ``data + alpha/(2B) ||W||^2``, the
    data term being the summed loss of the batch over B (cross-entropy summed over the
    outputs; squared error halved and summed over the outputs). chainrule's losses are
    ``data / s`` (s = 1 for softmax cross-entropy, the number of outputs for binary
    cross-entropy, half of it for mean squared error), so the same minimiser needs
    ``l2 = alpha / (2 B s)``. With sample weights (normalised to mean 1 before training)
    scikit-learn divides by their batch sum instead of B: B times their mean.
    """
    scale = {"sparse_categorical_crossentropy": 1.0, "binary_crossentropy": float(n_outputs),
             "mean_squared_error": n_outputs / 2.0}[loss]
    return alpha / (2.0 * batch_size * mean_sample_weight * scale)


@contextlib.contextmanager
def _threads(n):
    """Run the block with ``n`` threads in the core (None: as set), then restore the setting."""
    if n is None:
        yield
        return
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def _number(name, value, lo=None, hi=None, lo_open=False, hi_open=False, integer=False):
    """A parameter that must be a real (or integral) number in a range: TypeError if it is no
    number, ValueError if it is out of range, both naming the parameter and the value."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}; received {value!r}")
    v = int(value) if integer else float(value)
    ok = math.isfinite(v) if not integer else True
    if lo is not None:
        ok = ok and (v > lo if lo_open else v >= lo)
    if hi is not None:
        ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        rng = []
        if lo is not None:
            rng.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            rng.append(f"{'<' if hi_open else '<='} {hi}")
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'} "
                         f"{' and '.join(rng)}; received {value!r}")
    return v


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; received {value!r}")
    return value


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; received {value!r}")
    return bool(value)


class _EpochControl(_callbacks.Callback):
    """scikit-learn's per-iteration bookkeeping, run by ``Sequential.fit`` after each epoch:
    the loss curve, the validation score (early stopping) with the best weights, the
    no-improvement counter that stops training, and the 'invscaling' / 'adaptive' learning
    rates (through ``model.lr_scale``)."""

    def __init__(self, est, state, n_train, validation):
        super().__init__()
        self.est = est
        self.state = state  # the fitted attributes, updated in place
        self.n_train = n_train
        self.validation = validation  # (X_val, y_val, sample_weight_val) or None
        self.epochs_run = 0
        self.converged = False

    def on_epoch_end(self, epoch, logs=None):
        est, st, model = self.est, self.state, self.model
        loss = float(logs["loss"])
        self.epochs_run += 1
        st["n_iter_"] += 1
        st["t_"] += self.n_train
        st["loss_"] = loss
        st["loss_curve_"].append(loss)
        if est.verbose:
            print("Iteration %d, loss = %.8f" % (st["n_iter_"], loss), flush=True)
        self._update_no_improvement_count(loss)
        sgd = est.solver == "sgd"
        if sgd and est.learning_rate == "invscaling":
            model.lr_scale = 1.0 / (st["t_"] + 1) ** est.power_t
        if st["_no_improvement_count"] > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for "
                   f"{est.n_iter_no_change} consecutive epochs.")
            if sgd and est.learning_rate == "adaptive":
                lr = est.learning_rate_init * model.lr_scale
                if lr <= _ADAPTIVE_MIN_LR:
                    self._stop(msg + " Learning rate too small. Stopping.")
                else:
                    model.lr_scale = model.lr_scale / 5.0
                    st["_no_improvement_count"] = 0
                    if est.verbose:
                        print(msg + " Setting learning rate to %f" % (lr / 5.0), flush=True)
            else:
                self._stop(msg + " Stopping.")

    def _stop(self, msg):
        self.converged = True
        self.model.stop_training = True
        if self.est.verbose:
            print(msg, flush=True)

    def _update_no_improvement_count(self, loss):
        est, st = self.est, self.state
        if self.validation is not None:
            score = est._validation_score(self.model, *self.validation)
            st["validation_scores_"].append(score)
            if est.verbose:
                print("Validation score: %f" % score, flush=True)
            if score < st["best_validation_score_"] + est.tol:
                st["_no_improvement_count"] += 1
            else:
                st["_no_improvement_count"] = 0
            if score > st["best_validation_score_"]:
                st["best_validation_score_"] = score
                st["_best_weights"] = self.model.get_weights()
        else:
            if loss > st["best_loss_"] - est.tol:
                st["_no_improvement_count"] += 1
            else:
                st["_no_improvement_count"] = 0
            if loss < st["best_loss_"]:
                st["best_loss_"] = loss


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, checks, the model and fit."""

    # The fitted attributes the epoch callback updates (carried over by warm start and partial_fit).
    _STATE = ("n_iter_", "t_", "loss_", "loss_curve_", "best_loss_", "validation_scores_",
              "best_validation_score_", "_no_improvement_count", "_best_weights")

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 clipnorm=None, clipvalue=None, weight_decay=None, dtype=None, n_threads=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.weight_decay = weight_decay
        self.dtype = dtype
        self.n_threads = n_threads

    # -- parameters ----------------------------------------------------------------------
    def _check_params(self):
        """Every parameter checked (scikit-learn validates in fit, never in __init__);
        returns the hidden layer sizes as a list."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError("hidden_layer_sizes must be an integer or a sequence of integers; "
                            f"received {self.hidden_layer_sizes!r}") from None
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 1 <= s <= _layers.MAX_SIZE:
                raise ValueError("hidden_layer_sizes must hold positive integers; received "
                                 f"{self.hidden_layer_sizes!r}")
        _choice("activation", self.activation, _ACTIVATIONS)
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not available: chainrule trains by mini-batch "
                             f"epochs; use one of {list(_SOLVERS)}")
        _choice("solver", self.solver, _SOLVERS)
        _number("alpha", self.alpha, lo=0.0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if isinstance(self.batch_size, str):
                raise ValueError(f"batch_size must be 'auto' or a positive integer; received {self.batch_size!r}")
            _number("batch_size", self.batch_size, lo=1, integer=True)
        _choice("learning_rate", self.learning_rate, _LEARNING_RATES)
        _number("learning_rate_init", self.learning_rate_init, lo=0.0, lo_open=True)
        _number("power_t", self.power_t, lo=0.0)
        _number("max_iter", self.max_iter, lo=1, integer=True)
        _flag("shuffle", self.shuffle)
        _number("tol", self.tol, lo=0.0)
        if not isinstance(self.verbose, (bool, numbers.Integral)):
            raise TypeError(f"verbose must be a bool or an integer; received {self.verbose!r}")
        _flag("warm_start", self.warm_start)
        _number("momentum", self.momentum, lo=0.0, hi=1.0)
        _flag("nesterovs_momentum", self.nesterovs_momentum)
        _flag("early_stopping", self.early_stopping)
        _number("validation_fraction", self.validation_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _number("beta_1", self.beta_1, lo=0.0, hi=1.0, hi_open=True)
        _number("beta_2", self.beta_2, lo=0.0, hi=1.0, hi_open=True)
        _number("epsilon", self.epsilon, lo=0.0, lo_open=True)
        _number("n_iter_no_change", self.n_iter_no_change, lo=1, integer=True)
        for name in ("clipnorm", "clipvalue"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), lo=0.0, lo_open=True)
        if self.weight_decay is not None:
            _number("weight_decay", self.weight_decay, lo=0.0)
        if self.n_threads is not None:
            _number("n_threads", self.n_threads, lo=1, hi=MAX_THREADS, integer=True)
        self._model_dtype(np.float64)  # checks dtype
        return [int(s) for s in sizes]

    def _model_dtype(self, x_dtype):
        """The model's dtype: ``dtype``, or float32 for float32 X and float64 otherwise."""
        if self.dtype is None:
            return "float32" if x_dtype == np.float32 else "float64"
        try:
            name = np.dtype(self.dtype).name
        except TypeError:
            name = None
        if name not in ("float32", "float64"):
            raise ValueError(f"dtype must be None, 'float32' or 'float64'; received {self.dtype!r}")
        return name

    def _optimizer(self):
        """The chainrule optimizer for ``solver`` and its parameters."""
        common = {"clipnorm": self.clipnorm, "clipvalue": self.clipvalue}
        if self.weight_decay is not None:
            common["weight_decay"] = self.weight_decay
        lr = self.learning_rate_init
        if self.solver == "sgd":
            return _optimizers.SGD(lr, momentum=self.momentum,
                                   nesterov=bool(self.nesterovs_momentum and self.momentum > 0), **common)
        if self.solver in ("adam", "adamw"):
            cls = _optimizers.Adam if self.solver == "adam" else _optimizers.AdamW
            return cls(lr, beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, **common)
        if self.solver == "rmsprop":
            return _optimizers.RMSprop(lr, **common)
        return _optimizers.Adagrad(lr, **common)

    def _effective_batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                          "to be clipped", UserWarning, stacklevel=4)
        return int(min(self.batch_size, n))

    # -- fitted attributes ---------------------------------------------------------------
    def __sklearn_is_fitted__(self):
        return hasattr(self, "model_")

    @property
    def coefs_(self):
        """The Dense kernels, layer by layer, shape (fan_in, fan_out) (copies)."""
        check_is_fitted(self)
        return self.model_.get_weights()[0::2]

    @property
    def intercepts_(self):
        """The Dense biases, layer by layer (copies)."""
        check_is_fitted(self)
        return self.model_.get_weights()[1::2]

    # -- data ----------------------------------------------------------------------------
    def _check_sample_weight(self, sample_weight, X):
        """float64 weights of shape (n,), >= 0, finite, not all zero; None for None or
        uniform weights (which train exactly as no weights)."""
        if sample_weight is None:
            return None
        n = X.shape[0]
        if isinstance(sample_weight, numbers.Number):
            sw = np.full(n, sample_weight, dtype=np.float64)
        else:
            sw = check_array(sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight")
            if sw.ndim != 1:
                raise ValueError(f"sample_weight must be 1D array or scalar; received shape {sw.shape}")
            if sw.shape[0] != n:
                raise ValueError(f"sample_weight.shape == {sw.shape}, expected ({n},)!")
        if not np.isfinite(sw).all():
            raise ValueError("sample_weight contains NaN or infinite values")
        if (sw < 0).any():
            raise ValueError("Negative values in data passed to sample_weight")
        if not (sw > 0).any():
            raise ValueError("Sample weights must contain at least one non-zero number.")
        if (sw == sw[0]).all():
            return None
        return sw

    def _new_model(self, sizes, n_out, out_activation, dtype, seed, l2):
        act = _ACTIVATIONS[self.activation]
        reg = _regularizers.L2(l2) if l2 > 0 else None
        dense = [_layers.Dense(h, activation=act, kernel_regularizer=reg, name=f"hidden_{i + 1}")
                 for i, h in enumerate(sizes)]
        dense.append(_layers.Dense(n_out, activation=out_activation, kernel_regularizer=reg, name="output"))
        return Sequential(dense, dtype=dtype, seed=seed)

    @staticmethod
    def _set_l2(model, l2):
        """Give every Dense kernel the L2 factor ``l2`` (warm start / partial_fit with another
        batch size or alpha)."""
        index = 0
        for layer in model.layers:
            specs = layer.param_specs()
            if isinstance(layer, _layers.Dense):
                reg = layer.kernel_regularizer
                if reg is None or reg.l2 != l2 or reg.l1 != 0.0:
                    layer.kernel_regularizer = _regularizers.L2(l2) if l2 > 0 else None
                    model._core.set_regularization(index, 0.0, l2)
            index += len(specs)

    # -- training ------------------------------------------------------------------------
    def _fit(self, X, y, sample_weight=None, incremental=False, classes=None):
        sizes = self._check_params()
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        X, y = validate_data(self, X, y, reset=first_pass, dtype=(np.float64, np.float32),
                             multi_output=True, y_numeric=not isinstance(self, ClassifierMixin))
        sw = self._check_sample_weight(sample_weight, X)
        targets, labels = self._encode_targets(y, first_pass, incremental, classes, sw)

        rng = check_random_state(self.random_state)
        if first_pass:
            if isinstance(self.random_state, numbers.Integral):
                seed = int(self.random_state)
            else:
                seed = int(rng.randint(np.iinfo(np.int32).max))
        else:
            seed = self._seed

        validation = None
        index = np.arange(X.shape[0])
        if self.early_stopping:
            stratify = labels if (isinstance(self, ClassifierMixin) and targets.ndim == 1) else None
            index, val_index = train_test_split(index, random_state=rng, test_size=self.validation_fraction,
                                                stratify=stratify)
            if val_index.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            validation = (X[val_index], labels[val_index], None if sw is None else sw[val_index])
            X, targets = X[index], targets[index]
            sw = None if sw is None else sw[index]
        n = X.shape[0]
        mean_sw = 1.0
        if sw is not None:
            mean_sw = float(sw.mean())
            if mean_sw <= 0:
                raise ValueError("the training part has zero sample weights only: sample weights "
                                 "must contain at least one non-zero number in it")
            sw = sw / mean_sw
        batch_size = self._effective_batch_size(n)
        loss, n_out, out_activation = self._head()
        l2 = l2_factor(self.alpha, batch_size, loss, n_out, mean_sw)

        if first_pass:
            dtype = self._model_dtype(X.dtype)
            model = self._new_model(sizes, n_out, out_activation, dtype, seed, l2)
            model.compile(optimizer=self._optimizer(), loss=loss)
            state = {"n_iter_": 0, "t_": 0, "loss_": None, "loss_curve_": [],
                     "best_loss_": None if self.early_stopping else np.inf,
                     "validation_scores_": [] if self.early_stopping else None,
                     "best_validation_score_": -np.inf if self.early_stopping else None,
                     "_no_improvement_count": 0, "_best_weights": None}
            gradient_stats, epochs_done = {}, 0
        else:
            model = self.model_
            if len(model.layers) != len(sizes) + 1 or any(
                    l.units != h for l, h in zip(model.layers, sizes + [n_out])):
                raise ValueError("hidden_layer_sizes (or the number of outputs) differs from the "
                                 "fitted model's; fit again with warm_start=False")
            self._set_l2(model, l2)
            if not incremental:  # warm start: the weights stay, the optimizer starts afresh
                model.compile(optimizer=self._optimizer(), loss=loss)
            state = {k: getattr(self, k) for k in self._STATE}
            state["loss_curve_"] = list(state["loss_curve_"])
            if self.early_stopping and state["validation_scores_"] is None:
                state.update(validation_scores_=[], best_validation_score_=-np.inf, best_loss_=None)
            elif not self.early_stopping and state["best_loss_"] is None:
                state.update(best_loss_=np.inf, validation_scores_=None, best_validation_score_=None)
            if state["validation_scores_"] is not None:
                state["validation_scores_"] = list(state["validation_scores_"])
            gradient_stats = {k: {s: list(v) for s, v in d.items()} for k, d in self.gradient_stats_.items()}
            epochs_done = self._epochs_done
        state["n_iter_"] = 0  # counts this call's epochs, as scikit-learn's

        control = _EpochControl(self, state, n, validation)
        epochs = 1 if incremental else self.max_iter
        # scikit-learn's semantics, not Keras's: no remark on the input range (its users scale
        # with a StandardScaler in a pipeline), and non-finite weights raise ValueError below
        # instead of stopping fit at the last finite step.
        model._input_range_checked = True
        with _threads(self.n_threads):
            model.fit(X, targets, epochs=epochs_done + epochs, initial_epoch=epochs_done,
                      batch_size=batch_size, verbose=0, shuffle=bool(self.shuffle), seed=seed,
                      sample_weight=sw, callbacks=[control], stop_on_nonfinite=False)
        for layer, stats in model.history.layer_stats.items():
            dst = gradient_stats.setdefault(layer, {})
            for k, v in stats.items():
                dst.setdefault(k, []).extend(v)
        if self.early_stopping and state["_best_weights"] is not None:
            model.set_weights(state["_best_weights"])
        if not all(np.isfinite(w).all() for w in model.get_weights()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")

        self.model_ = model
        self._seed = seed
        self._epochs_done = epochs_done + control.epochs_run
        self.gradient_stats_ = gradient_stats
        for k in self._STATE:
            setattr(self, k, state[k])
        self.n_layers_ = len(sizes) + 2
        self.n_outputs_ = n_out if not self._binary_output() else 1
        self.out_activation_ = {"softmax": "softmax", "sigmoid": "logistic", "linear": "identity"}[out_activation]
        if not incremental and not control.converged and state["n_iter_"] == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                          "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        return self

    def _binary_output(self):
        return False

    def _validation_score(self, model, X, y, sample_weight):
        raise NotImplementedError

    def _forward(self, X, model=None):
        """The network's outputs for X (validated unless ``model`` is given) as float64."""
        if model is None:
            check_is_fitted(self)
            X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
            model = self.model_
        with _threads(self.n_threads):
            out = model.predict(X)
        return np.asarray(out, dtype=np.float64)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X, y (``sample_weight``: one weight >= 0 per sample).

        With ``warm_start`` a fitted model keeps its weights and trains for up to
        ``max_iter`` more epochs with a fresh optimizer. Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by chainrule.

    scikit-learn's ``MLPClassifier`` interface: multiclass (softmax with cross-entropy),
    binary and multilabel (sigmoid outputs with binary cross-entropy) targets, any label
    type. Parameters are scikit-learn's, and:

    solver : 'adam' (default), 'sgd', 'adamw', 'rmsprop' or 'adagrad'.
    activation : 'relu' (default), 'identity', 'logistic', 'tanh', or chainrule's
        'linear', 'sigmoid', 'leaky_relu'.
    clipnorm, clipvalue, weight_decay : passed to the chainrule optimizer (None: off / its default).
    dtype : None (float32 for float32 X, else float64), 'float32' or 'float64'.
    n_threads : threads of the core during fit and predict (None: the current setting,
        which is restored afterwards).

    Fitted attributes: ``classes_``, ``n_features_in_``, ``feature_names_in_``,
    ``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
    ``best_validation_score_``, ``n_iter_``, ``t_``, ``coefs_``, ``intercepts_``,
    ``n_layers_``, ``n_outputs_``, ``out_activation_``, ``model_`` (the trained
    :class:`chainrule.Sequential`) and ``gradient_stats_`` (chainrule's per-layer gradient
    record, ``History.layer_stats``: layer name -> statistic -> one value per epoch).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _encode_targets(self, y, first_pass, incremental, classes, sw):
        """(targets for the core, labels for scoring). Multiclass: class indices; binary:
        0/1; multilabel: the indicator matrix."""
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if first_pass:
            binarizer = LabelBinarizer()
            if incremental and not type_of_target(y).startswith("multilabel"):
                if classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit.")
                binarizer.fit(np.asarray(classes))
            else:
                binarizer.fit(y)
            if len(binarizer.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; y has "
                                 f"1 class: {binarizer.classes_[0]!r}")
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
            self._indicator_dtype = y.dtype if binarizer.y_type_ == "multilabel-indicator" else None
        else:
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"`classes={classes!r}` is not the same as on the first call to "
                                 f"partial_fit: {self.classes_!r}")
            present = unique_labels(y)
            if self.warm_start and not incremental:
                if set(present) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as "
                                     "in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {present}")
            elif np.setdiff1d(present, self.classes_).size:
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {present}.")
        kind = self._label_binarizer.y_type_
        if kind == "multilabel-indicator":
            targets = self._label_binarizer.transform(y).astype(np.float64)
        else:
            targets = np.searchsorted(self.classes_, y)
            if sw is not None and np.unique(targets[sw > 0]).size < 2 and not incremental:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes with a "
                                 "positive sample_weight; the weights leave 1 class")
            if kind == "binary":
                targets = targets.astype(np.float64)
        return targets, y

    def _head(self):
        kind = self._label_binarizer.y_type_
        if kind == "multiclass":
            return "sparse_categorical_crossentropy", len(self.classes_), "softmax"
        if kind == "binary":
            return "binary_crossentropy", 1, "sigmoid"
        return "binary_crossentropy", len(self.classes_), "sigmoid"

    def _binary_output(self):
        return self._label_binarizer.y_type_ == "binary"

    def _labels_from_output(self, out):
        kind = self._label_binarizer.y_type_
        if kind == "multiclass":
            return self.classes_[np.argmax(out, axis=1)]
        if kind == "binary":
            return self.classes_[(out[:, 0] > 0.5).astype(np.intp)]
        return (out > 0.5).astype(self._indicator_dtype)

    def _validation_score(self, model, X, y, sample_weight):
        return accuracy_score(y, self._labels_from_output(self._forward(X, model)), sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing from the current weights and optimizer state.
        ``classes`` (all labels that will ever occur) is required on the first call for
        binary and multiclass targets. Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True, classes=classes)

    def predict(self, X):
        """Class labels (multilabel: the indicator matrix)."""
        return self._labels_from_output(self._forward(X))

    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes); multilabel: per-label probabilities."""
        out = self._forward(X)
        if self._label_binarizer.y_type_ == "binary":
            return np.hstack([1.0 - out, out])
        return out

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by chainrule (mean squared error, identity
    output; one or several targets). Parameters and fitted attributes as
    :class:`MLPClassifier` (without ``classes_``)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _encode_targets(self, y, first_pass, incremental, classes, sw):
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if first_pass:
            self._n_targets = y.shape[1]
        elif y.shape[1] != self._n_targets:
            raise ValueError(f"y has {y.shape[1]} targets, but {type(self).__name__} was fitted "
                             f"with {self._n_targets}")
        return y, y

    def _head(self):
        return "mean_squared_error", self._n_targets, "linear"

    def _validation_score(self, model, X, y, sample_weight):
        return r2_score(y, self._forward(X, model), sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and optimizer state.
        Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predicted targets, shape (n,) for one target, else (n, n_targets)."""
        out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out
