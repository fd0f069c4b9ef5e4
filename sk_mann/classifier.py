"""MANNOneShotClassifier: one estimator for scikit-learn and River."""

from __future__ import annotations

import copy
import functools
import math
import numbers
import operator
import os
import struct
import sys
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from river import base as river_base
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from . import _jit_step
from . import pretrained as _pretrained
from ._numpy_step import NumpyMANN
from .episodes import EpisodeSampler
from .labels import LabelScheme, make_label_scheme
from .model import MANNState, build_network

__all__ = ["MANNOneShotClassifier"]

#: Rows processed at once by ``predict_proba`` (bounds memory: each row carries
#: its own copy of the memory after its hypothetical write).
_PREDICT_CHUNK = 512
#: Up to this many bound classes, ``predict_proba_one`` normalises with Python
#: floats (a handful of NumPy calls would cost more than the arithmetic).
_PYTHON_SOFTMAX_MAX = 32
#: Scores closer than this (relative) to the top one may tie in probability:
#: ``predict_one`` then compares probabilities, as ``predict_proba_one`` has them.
_TIE_GAP = 1e-12


def _atomic(method):
    """Restore the estimator's state if ``method`` raises (no half-done updates)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        saved = self.__dict__.copy()
        # The only objects mutated in place (everything else is replaced).
        for key in ("bindings_", "codes_", "class_index_", "class_objects_"):
            if key in saved:
                saved[key] = saved[key].copy()
        rng_state = self.rng_.bit_generator.state if "rng_" in saved else None
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            if rng_state is not None:
                self.rng_.bit_generator.state = rng_state
            raise

    return wrapper


class _StreamMemo:
    """What streaming derives from the committed state (see ``_stream_cache``).

    Slots, not a tuple: a prediction sets ``base`` and ``pending`` in place.
    """

    __slots__ = (
        "state",
        "prev_code",
        "weights_version",
        "np_state",
        "label",
        "terms",
        "base",
        "pending",
    )

    def __init__(self, state, prev_code, weights_version, np_state, label, terms):
        self.state = state  # the ``_state_`` object it was derived from
        self.prev_code: int = prev_code
        self.weights_version: tuple = weights_version
        self.np_state = np_state  # NumPy views of ``state``
        self.label: np.ndarray = label  # ``prev_code``'s vector, 1-D, network dtype
        self.terms: np.ndarray | None = terms  # its gate terms (see label_terms)
        self.base: np.ndarray | None = None  # next gate terms without x, once known
        self.pending: tuple | None = None  # (row, x, step) of the last prediction


def _map_state(fn, state):
    """Apply ``fn`` to every tensor of a (nested) recurrent state."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(_map_state(fn, s) for s in state))
    if isinstance(state, tuple):
        return tuple(_map_state(fn, s) for s in state)
    return state


def _state_tensors(state):
    """The recurrent state as tensors (the NumPy path keeps NumPy arrays)."""
    if isinstance(state.h, np.ndarray):
        return NumpyMANN.state_to_torch(state)
    return state


def _sort_key(value: Any) -> tuple:
    """Order feature names: numbers numerically, then everything else by repr."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, repr(value))


class MANNOneShotClassifier(ClassifierMixin, BaseEstimator, river_base.Classifier):
    """One-shot classifier backed by a Memory-Augmented Neural Network (LRUA).

    The network's slow weights are meta-trained once (``fit`` on many classes,
    or shipped ``pretrained`` weights). New classes are then learnt from one or
    a few examples by writing them to the external memory -- no gradient step --
    and recognised by content-based reads (Santoro et al. 2016).

    The same object is a scikit-learn classifier (``fit``, ``partial_fit``,
    ``predict``, ``predict_proba``, ``score``) and a River classifier
    (``learn_one``, ``predict_one``, ``predict_proba_one``).

    Parameters
    ----------
    controller : {"lstm", "ff"}, default="lstm"
        LSTM controller (the paper's model) or feed-forward controller.
    controller_size : int, default=200
        Units of the controller.
    n_slots : int, default=128
        Memory rows.
    slot_size : int, default=40
        Size of a memory row.
    n_reads : int, default=4
        Read heads (each also writes).
    gamma : float, default=0.95
        Usage decay of the LRUA memory.
    read_feedback : bool, default=True
        Feed the previous reads into the controller.
    write_content : {"key", "add"}, default="key"
        Write the key itself (the paper) or a separate add vector.
    read_after_write : bool, default=True
        Read the memory after this step's write (True) or before it.
    key_strength : bool, default=False
        Not in the paper: each head also emits a key strength ``beta >= 0``
        that sharpens its read (``softmax(beta * cosine)``, as the Neural
        Turing Machine's content addressing). With it the add-vector network
        (``write_content="add"``) learns one-shot recall in fewer episodes.
    labels : {"onehot", "string"}, default="onehot"
        Label codes: ``n_way`` one-hot codes, or the paper's 5-character strings
        (3125 codes).
    n_way : int, default=5
        Classes per meta-training episode (and the number of one-hot codes).
    n_per_class : int, default=10
        Samples of each class per meta-training episode.
    n_prime_per_class : int, default=5
        Samples of each class that ``fit`` writes to memory after meta-training,
        in a seeded shuffled order. Chosen by measurement
        (``benchmarks/priming.py``): a shuffled order beats writing the classes
        one after another, and 5 per class scored as well as or better than 10
        (with 10, predictions come after the 50 steps the network was trained on).
    n_episodes : int or "auto", default="auto"
        Meta-training episodes run by ``fit``. ``"auto"``: 0 when ``pretrained``
        is set (only prime the memory), else 100,000 (the paper's scale).
    batch_size : int, default=16
        Episodes per optimiser step.
    optimizer : {"adam", "rmsprop"}, default="adam"
    lr : float, default=1e-3
    clip_value : float or None, default=10.0
        Clip gradient elements to ``[-clip_value, clip_value]``.
    compile : bool or dict, default=False
        Meta-train through ``torch.compile`` (see
        :func:`sk_mann.training.meta_train`): 1.2-1.9x faster on a CPU after a
        one-off compilation of a few minutes, so worth it for long runs only.
        Needs a C++ compiler. Streaming and prediction are unaffected. A dict
        compiles with these ``torch.compile`` options (``meta_train``'s
        ``compile_options``), e.g. ``{"cpp_wrapper": True}``.
    image_shape : tuple of int or None, default=None
        ``(height, width)`` of the images when rows of ``X`` are images; needed by
        ``rotate_classes`` and ``augment``.
    rotate_classes : bool, default=False
        During meta-training, 90/180/270-degree rotations of a class are new classes.
    augment : bool, default=False
        During meta-training, jitter every image with small random shifts and
        rotations.
    pretrained : str or None, default=None
        Name of shipped weights (see :func:`sk_mann.pretrained.list_pretrained`,
        e.g. ``"omniglot_5way"``) or path of a weights file. The model
        parameters above must match the file's.
    seed : int or None, default=None
        Seeds the network's initial weights, the meta-training episodes and the
        assignment of label codes to classes.
    device : str, default="cpu"
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    n_jobs : int or None, default=None
        Threads of prediction and streaming on the CPU. ``predict`` and
        ``predict_proba`` score chunks of rows in parallel. With numba
        installed (``pip install sk_mann[fast]``), the step of one streamed
        sample (``learn_one``, ``predict_one``, ``partial_fit``) splits the
        controller's two large products by unit over the threads, so each core
        reads only its share of the weights. ``None`` means 1, ``-1`` every
        core. Worth it on an otherwise idle machine; see the user guide's
        "Speed" section. Results do not depend on it. Meta-training is not
        affected (see ``torch.set_num_threads``).
    verbose : int, default=1
        Progress bar and per-epoch log during meta-training when > 0 (shown only
        when ``fit`` meta-trains, i.e. ``n_episodes > 0``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Every class seen (by ``fit``, ``partial_fit`` or ``learn_one``).
    n_features_in_ : int
        Number of features.
    module_ : torch.nn.Module
        The network.
    history_ : list of dict
        Meta-training history (loss per epoch) of the last ``fit``.
    state_ : MANNState
        The stream's fast state: controller state, last reads and the memory
        (``state_.memory.memory``, one row per slot), as tensors of batch 1.

    See Also
    --------
    sk_mann.evaluate_per_instance : per-instance accuracy on held-out classes.
    sklearn.neighbors.KNeighborsClassifier : the nearest-neighbour baseline.

    Notes
    -----
    Slow weights change only in ``fit``. Every other learning method only writes
    to the memory: ``partial_fit`` and ``learn_one`` run one network step per
    sample on ``(x, label code of the previous sample)``, commit the new memory,
    and bind the sample's class to a label code. ``predict`` and friends are
    pure reads: every row is answered from the same committed state, and the
    step's result is thrown away. A stream processed predict-then-learn is the
    paper's protocol.

    Label capacity: one-hot labels give ``n_way`` codes, string labels 3125.
    When a new class arrives and every code is taken, the code of the least
    recently seen class is reused (that class is forgotten); a warning says so
    once.

    References
    ----------
    Santoro, A., Bartunov, S., Botvinick, M., Wierstra, D., Lillicrap, T. (2016).
    Meta-Learning with Memory-Augmented Neural Networks. ICML, PMLR 48:1842-1850.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_mann import MANNOneShotClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 6))
    >>> y = np.repeat(["a", "b", "c", "d"], 10)
    >>> clf = MANNOneShotClassifier(controller_size=16, n_slots=8, slot_size=4,
    ...                             n_reads=1, n_episodes=32, seed=0,
    ...                             verbose=0).fit(X, y)
    >>> clf.predict(X[:3]).shape
    (3,)
    >>> clf.learn_one({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5, 5: 0.6}, "e")
    >>> sorted(clf.predict_proba_one({0: 0.1, 1: 0.2}))
    ['a', 'b', 'c', 'd', 'e']
    """

    _parameter_constraints: dict = {
        "controller": [StrOptions({"lstm", "ff"})],
        "controller_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_slots": [Interval(numbers.Integral, 1, None, closed="left")],
        "slot_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_reads": [Interval(numbers.Integral, 1, None, closed="left")],
        "gamma": [Interval(numbers.Real, 0, 1, closed="both")],
        "read_feedback": ["boolean"],
        "write_content": [StrOptions({"key", "add"})],
        "read_after_write": ["boolean"],
        "key_strength": ["boolean"],
        "labels": [StrOptions({"onehot", "string"})],
        "n_way": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_per_class": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_prime_per_class": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_episodes": [
            Interval(numbers.Integral, 0, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "optimizer": [StrOptions({"adam", "rmsprop"})],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "clip_value": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "compile": ["boolean", dict],
        "image_shape": [tuple, None],
        "rotate_classes": ["boolean"],
        "augment": ["boolean"],
        "pretrained": [str, os.PathLike, None],
        "seed": ["random_state"],
        "device": [str],
        "n_jobs": [
            Interval(numbers.Integral, None, -1, closed="right"),
            Interval(numbers.Integral, 1, None, closed="left"),
            None,
        ],
        "verbose": ["verbose"],
    }

    #: Parameters that define the network; a pretrained file must match them.
    _ARCH_PARAMS = (
        "controller",
        "controller_size",
        "n_slots",
        "slot_size",
        "n_reads",
        "gamma",
        "read_feedback",
        "write_content",
        "read_after_write",
        "key_strength",
    )
    #: Architecture parameters added after weights files were first shipped:
    #: a file without one was written by a network with this value.
    _ARCH_DEFAULTS_OF_OLD_FILES = {"key_strength": False}

    def __init__(
        self,
        *,
        controller: str = "lstm",
        controller_size: int = 200,
        n_slots: int = 128,
        slot_size: int = 40,
        n_reads: int = 4,
        gamma: float = 0.95,
        read_feedback: bool = True,
        write_content: str = "key",
        read_after_write: bool = True,
        key_strength: bool = False,
        labels: str = "onehot",
        n_way: int = 5,
        n_per_class: int = 10,
        n_prime_per_class: int = 5,
        n_episodes: int | str = "auto",
        batch_size: int = 16,
        optimizer: str = "adam",
        lr: float = 1e-3,
        clip_value: float | None = 10.0,
        compile: bool | dict = False,
        image_shape: tuple[int, int] | None = None,
        rotate_classes: bool = False,
        augment: bool = False,
        pretrained: str | None = None,
        seed: int | None = None,
        device: str = "cpu",
        n_jobs: int | None = None,
        verbose: int = 1,
    ) -> None:
        self.controller = controller
        self.controller_size = controller_size
        self.n_slots = n_slots
        self.slot_size = slot_size
        self.n_reads = n_reads
        self.gamma = gamma
        self.read_feedback = read_feedback
        self.write_content = write_content
        self.read_after_write = read_after_write
        self.key_strength = key_strength
        self.labels = labels
        self.n_way = n_way
        self.n_per_class = n_per_class
        self.n_prime_per_class = n_prime_per_class
        self.n_episodes = n_episodes
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.clip_value = clip_value
        self.compile = compile
        self.image_shape = image_shape
        self.rotate_classes = rotate_classes
        self.augment = augment
        self.pretrained = pretrained
        self.seed = seed
        self.device = device
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ------------------------------------------------------------------ tags
    @property
    def _multiclass(self) -> bool:
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        # A meta-learner primed with a few samples per class is not expected to
        # fit arbitrary training sets (sklearn's 83% training-accuracy check).
        tags.classifier_tags.poor_score = True
        return tags

    @classmethod
    def _unit_test_params(cls):
        """Cheap settings for River's and scikit-learn's check suites."""
        yield {
            "controller_size": 8,
            "n_slots": 8,
            "slot_size": 4,
            "n_reads": 1,
            "n_episodes": 2,
            "batch_size": 2,
            "n_per_class": 2,
            "n_prime_per_class": 2,
            "seed": 0,
            "verbose": 0,
        }

    @classmethod
    def from_pretrained(
        cls, pretrained: str | os.PathLike, **params: Any
    ) -> MANNOneShotClassifier:
        """An estimator for ``pretrained`` with the file's architecture.

        ``MANNOneShotClassifier(pretrained=...)`` needs its architecture
        parameters (``controller``, ``controller_size``, ``n_slots``,
        ``slot_size``, ``n_reads``, ``gamma``, ``read_feedback``,
        ``write_content``, ``read_after_write``, ``key_strength``, ``labels``,
        ``n_way``) to equal the weights file's. This reads them from the file,
        so only the other parameters need to be given. The result is a plain
        unfitted estimator: ``get_params`` shows every parameter, so
        ``clone``, pipelines and grid searches work as usual.

        Parameters
        ----------
        pretrained : str or path-like
            A shipped model's name (:func:`sk_mann.pretrained.list_pretrained`)
            or the path of a weights file.
        **params
            Other constructor parameters (``seed``, ``n_jobs``, ...). An
            architecture parameter given here must equal the file's.

        Returns
        -------
        MANNOneShotClassifier

        Raises
        ------
        FileNotFoundError
            When ``pretrained`` names no shipped model and no file.
        ValueError
            When the file is unreadable, holds no MANN, or an architecture
            parameter in ``params`` differs from the file's.

        Examples
        --------
        >>> clf = MANNOneShotClassifier.from_pretrained("omniglot_5way_add_ks", seed=0)
        >>> clf.write_content, clf.key_strength, clf.n_way
        ('add', True, 5)
        """
        config, _ = _pretrained.load_weights(pretrained)
        if config.get("network") != "mann":
            raise ValueError(
                f"pretrained={os.fspath(pretrained)!r} holds a "
                f"{config.get('network')!r} network, not a MANN; "
                "MANNOneShotClassifier loads MANN weights only."
            )
        from_file = cls._file_params(config)
        clashes = [
            f"{k}={params[k]!r} (the file's: {v!r})"
            for k, v in from_file.items()
            if k in params and params[k] != v
        ]
        if clashes:
            raise ValueError(
                f"pretrained={os.fspath(pretrained)!r} was trained with other "
                f"architecture parameters than given: {'; '.join(clashes)}. Leave "
                "them out (from_pretrained reads them from the file)."
            )
        return cls(pretrained=pretrained, **{**from_file, **params})

    # -------------------------------------------------------------- helpers
    @classmethod
    def _file_params(cls, config: dict) -> dict[str, Any]:
        """A weights file's architecture parameters, ``labels`` and ``n_way``."""
        arch = {**cls._ARCH_DEFAULTS_OF_OLD_FILES, **config.get("kwargs", {})}
        params = {k: arch[k] for k in cls._ARCH_PARAMS if k in arch}
        params.update(labels=config.get("labels"), n_way=config.get("n_way"))
        return params

    def _torch_device(self) -> torch.device:
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={self.device!r} but CUDA is not available on this machine; "
                "use device='cpu'."
            )
        return dev

    def _scheme(self) -> LabelScheme:
        return make_label_scheme(self.labels, self.n_way)

    def _resolved_n_episodes(self) -> int:
        if self.n_episodes == "auto":
            return 0 if self.pretrained is not None else 100_000
        return int(self.n_episodes)

    def _network_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._ARCH_PARAMS}

    def _network_config(self, n_features: int) -> dict[str, Any]:
        return {
            "network": "mann",
            "n_inputs": int(n_features),
            "labels": self.labels,
            "n_way": int(self.n_way),
            "kwargs": self._network_kwargs(),
        }

    def _build_module(self, n_features: int) -> torch.nn.Module:
        """The network: seeded weights, or ``pretrained`` checked against params."""
        scheme = self._scheme()
        if self.pretrained is not None:
            config, state_dict = _pretrained.load_weights(self.pretrained)
            self._check_pretrained_config(config, n_features)
        seed = self.seed if isinstance(self.seed, numbers.Integral) else None
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            else:
                torch.seed()
            module = build_network(
                "mann", n_features, scheme.width, scheme.width, **self._network_kwargs()
            )
        if self.pretrained is not None:
            try:
                module.load_state_dict(state_dict)
            except RuntimeError as exc:
                raise ValueError(
                    f"pretrained={self.pretrained!r}: weights do not fit the network "
                    f"({exc}). The file is of another architecture."
                ) from exc
        return module.to(self._torch_device())

    def _check_pretrained_config(self, config: dict, n_features: int) -> None:
        ours = self._network_config(n_features)
        diffs = []
        for key in ("network", "labels", "n_inputs"):
            if config.get(key) != ours[key]:
                diffs.append(f"{key}: file={config.get(key)!r}, model={ours[key]!r}")
        if self.labels == "onehot" and config.get("n_way") != ours["n_way"]:
            diffs.append(
                f"n_way: file={config.get('n_way')!r}, model={ours['n_way']!r}"
            )
        theirs = self._file_params(config)
        for key, val in ours["kwargs"].items():
            if theirs.get(key) != val:
                diffs.append(f"{key}: file={theirs.get(key)!r}, model={val!r}")
        if diffs:
            what = (
                "input size"
                if any(d.startswith("n_inputs") for d in diffs)
                else "architecture"
            )
            raise ValueError(
                f"pretrained={str(self.pretrained)!r} has another {what} than this "
                f"model: {'; '.join(diffs)}. Set these parameters to the file's values "
                "(or transform X to the file's input size), or use pretrained=None."
            )

    def _new_fast_state(self) -> None:
        """Wipe memory, controller state, bindings and previous label."""
        self._state_ = self.module_.initial_state(1)
        self.prev_code_ = -1
        self.bindings_ = OrderedDict()  # class -> code, least recently seen first
        self.codes_ = {}  # code -> class

    def _initialize(self, n_features: int) -> None:
        """Build the network and an empty fast state (no meta-training)."""
        self.n_features_in_ = int(n_features)
        self.module_ = self._build_module(n_features)
        self.module_.eval()
        self._make_fast_path()
        self.scheme_ = self._scheme()
        self.rng_ = np.random.default_rng(self.seed)
        self.history_ = []
        self.class_objects_ = {}
        self._set_classes(np.array([]))
        self.recycled_warning_ = False
        self._new_fast_state()

    def _add_classes(self, labels) -> None:
        """Add unseen labels to ``classes_`` (sorted when they can be)."""
        new = []
        for c in labels:
            key = _key(c)
            if key not in self.class_index_:
                self.class_index_[key] = -1
                self.class_objects_[key] = c
                new.append(c)
        if not new:
            return
        merged = list(self.classes_) + new
        try:
            merged = sorted(merged)
        except TypeError:
            pass
        arr = np.empty(len(merged), dtype=object)
        arr[:] = merged
        # Keep a plain dtype (str, int, float, bool) when all labels share one
        # Python type; mixed types stay objects (np.asarray would turn 7 into "7").
        if len({type(_key(c)) for c in merged}) == 1:
            typed = np.asarray(merged)
            if typed.dtype != object and typed.ndim == 1:
                arr = typed
        self._set_classes(arr)

    def _set_classes(self, classes: np.ndarray) -> None:
        self.classes_ = classes
        self.class_index_ = {_key(c): i for i, c in enumerate(classes)}
        # The label objects as first given (River keys): keep them, not numpy copies.
        objects = getattr(self, "class_objects_", {})
        self.class_objects_ = {
            k: objects.get(k, _key(c)) for k, c in zip(self.class_index_, classes)
        }

    def _bind(self, label) -> int:
        """Code of ``label``; a new one gets a free (or the least recent) code."""
        key = _key(label)
        if key in self.bindings_:
            self.bindings_.move_to_end(key)
            return self.bindings_[key]
        n_codes = self.scheme_.n_codes
        if len(self.bindings_) < n_codes:
            used = set(self.codes_)
            if n_codes <= 4096:
                free = np.array([c for c in range(n_codes) if c not in used])
                code = int(self.rng_.choice(free))
            else:  # pragma: no cover - no scheme this large today
                code = int(self.rng_.integers(n_codes))
                while code in used:
                    code = int(self.rng_.integers(n_codes))
        else:
            _, code = self.bindings_.popitem(last=False)
            old = self.codes_.pop(code)
            if not self.recycled_warning_:
                warnings.warn(
                    f"All {n_codes} label codes are bound: class {old!r} (the least "
                    f"recently seen) is forgotten and its code reused for {label!r}. "
                    "Use labels='string' (3125 codes) for more classes per stream.",
                    UserWarning,
                    stacklevel=_warn_stacklevel(),
                )
                self.recycled_warning_ = True
        self.bindings_[key] = code
        self.codes_[code] = label
        return code

    def _as_tensor(self, X: np.ndarray) -> torch.Tensor:
        # A copy: inputs may be read-only (cached label codes, memoised rows).
        return torch.tensor(
            np.asarray(X, dtype=np.float32), device=self.module_.output.weight.device
        )

    def _make_fast_path(self) -> None:
        """NumPy views of the weights for streaming on the CPU (None elsewhere)."""
        on_cpu = self.module_.output.weight.device.type == "cpu"
        self._numpy_ = NumpyMANN(self.module_) if on_cpu else None

    def _label_vector(self, code: int, n: int = 1) -> np.ndarray:
        vec = self.scheme_.encode_one(code)
        return np.repeat(vec, n, axis=0) if n > 1 else vec

    def _stream_cache(self) -> _StreamMemo:
        """The NumPy view of ``_state_`` and the previous label, memoised.

        Valid while ``_state_``, ``prev_code_`` and the weights (torch's version
        counters: in-place updates count) are the ones it was built from;
        rebuilt otherwise. ``base``, the next step's gate terms that do not
        depend on its input, is kept once a step has computed it. ``pending``
        is the last one-row prediction, which :meth:`_write` commits instead of
        recomputing when the same row is then learnt (River's
        predict-then-learn loop). The memo lives on the NumPy engine, outside
        the estimator's ``__dict__``: predictions leave the estimator as it
        was, and pickles and copies rebuild it.
        """
        fast = self._numpy_
        fast.n_threads = self._stream_threads()  # n_jobs may have been reset
        memo, version = fast.memo, fast.weights_version()
        if (
            memo is None
            or memo.state is not self._state_
            or memo.prev_code != self.prev_code_
            or memo.weights_version != version
        ):
            np_state = self._state_
            if isinstance(np_state.h, torch.Tensor):  # fresh, or loaded
                np_state = NumpyMANN.state_to_numpy(np_state)
            memo = fast.memo = self._fresh_memo(self._state_, np_state, version)
        return memo

    def _fresh_memo(self, state, np_state, version: tuple) -> _StreamMemo:
        """The memo of ``state`` and ``prev_code_``, before any step from them."""
        fast, code = self._numpy_, self.prev_code_
        # The label's vector and gate terms, kept per code for the scheme and
        # the weights they were made with.
        if fast.by_code_of is not self.scheme_ or fast.by_code_version != version:
            fast.by_code, fast.by_code_of = {}, self.scheme_
            fast.by_code_version = version
        entry = fast.by_code.get(code)
        if entry is None:
            label = fast.label_row(self._label_vector(code))
            terms = fast.label_terms(label) if fast.jit else None
            entry = fast.by_code[code] = (label, terms)
        return _StreamMemo(state, code, version, np_state, *entry)

    def _stream_threads(self) -> int:
        """``n_jobs`` as a number of threads."""
        n = self.n_jobs
        if n is None:
            return 1
        return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)

    def _predict_row_fast(self, row: np.ndarray) -> np.ndarray:
        """Logits of one row on the NumPy path; remembers the step for learn_one."""
        memo = self._stream_cache()
        x = np.ascontiguousarray(row, dtype=self._numpy_.dtype)
        logits, step = self._numpy_.step_one(
            x, memo.np_state, memo.label, memo.base, memo.terms
        )
        memo.base, memo.pending = step.base, (row, x, step)
        return logits

    def _write(self, X: np.ndarray, y) -> None:
        """Learn rows in order: step, commit, bind, remember the code."""
        if self._numpy_ is None:
            self._write_torch(X, y)
            return
        for i in range(X.shape[0]):
            self._write_one(X[i], y[i])

    def _write_one(self, row: np.ndarray, label) -> None:
        """:meth:`_write` of one row on the NumPy path."""
        fast = self._numpy_
        memo = self._stream_cache()
        pending = memo.pending
        # The row just predicted (River's predict-then-learn): commit that step.
        # The same object is the memoised row of the same dict values.
        if pending is not None and pending[0] is row:
            step = pending[2]
        else:
            x = np.ascontiguousarray(row, dtype=fast.dtype)
            if pending is not None and np.array_equal(pending[1], x):
                step = pending[2]
            else:
                _, step = fast.step_one(
                    x, memo.np_state, memo.label, memo.base, memo.terms
                )
        new = fast.commit(step, memo.np_state)
        self.prev_code_ = self._bind(label)
        # On the NumPy path the state stays NumPy arrays (pickled as such).
        self._state_ = new
        fast.memo = self._fresh_memo(new, new, memo.weights_version)

    @torch.no_grad()
    def _write_torch(self, X: np.ndarray, y) -> None:
        """:meth:`_write` with the network's own step (accelerators; reference)."""
        Xt = self._as_tensor(X)
        for i in range(Xt.shape[0]):
            label = self._as_tensor(self._label_vector(self.prev_code_))
            inputs = torch.cat([Xt[i : i + 1], label], dim=1)
            _, self._state_ = self.module_.step(inputs, _state_tensors(self._state_))
            self.prev_code_ = self._bind(y[i])

    @torch.no_grad()
    def _bound_log_probs(self, X: np.ndarray) -> tuple[np.ndarray, list]:
        """Scores (float64) of every bound code per row, and the classes.

        Log-probabilities up to a per-row constant: a softmax over the bound codes
        (:meth:`_proba_from_log_probs`) gives the renormalised probabilities.
        """
        codes = np.array(list(self.bindings_.values()), dtype=np.int64)
        labels = [self.codes_[c] for c in codes]
        out = np.empty((X.shape[0], len(codes)))
        if self._numpy_ is not None:
            memo = self._stream_cache()
            np_state, base = memo.np_state, memo.base
            if base is None:
                base = memo.base = self._numpy_.prepare(
                    np_state, memo.label, memo.terms
                )
            columns = self.scheme_.output_columns(codes)

            def score(start: int) -> None:
                rows = np.asarray(X[start : start + _PREDICT_CHUNK], self._numpy_.dtype)
                logits = self._numpy_.predict_logits(rows, np_state, base)
                # Scores: log-probabilities up to a per-row constant, which the
                # renormalisation over bound codes cancels.
                out[start : start + rows.shape[0]] = logits[:, columns].sum(
                    axis=2, dtype=float
                )

            starts = range(0, X.shape[0], _PREDICT_CHUNK)
            n_threads = min(self._stream_threads(), len(starts))
            if n_threads > 1:  # chunks in parallel, one BLAS thread each
                with threadpool_limits(1), ThreadPoolExecutor(n_threads) as pool:
                    list(pool.map(score, starts))
            else:
                for start in starts:
                    score(start)
            return out, labels
        for start in range(0, X.shape[0], _PREDICT_CHUNK):
            rows = np.asarray(X[start : start + _PREDICT_CHUNK], dtype=np.float32)
            n = rows.shape[0]
            inputs = np.concatenate(
                [rows, self._label_vector(self.prev_code_, n)], axis=1
            )
            state = _map_state(
                lambda t: t.expand(n, *t.shape[1:]), _state_tensors(self._state_)
            )
            logits, _ = self.module_.step(self._as_tensor(inputs), state)
            out[start : start + n] = (
                self.scheme_.code_log_probs(logits.double(), codes).cpu().numpy()
            )
        return out, labels

    def _proba_matrix(self, X: np.ndarray) -> np.ndarray:
        """Probabilities over ``classes_`` (columns), renormalised over bound codes."""
        proba = np.zeros((X.shape[0], len(self.classes_)))
        if not self.bindings_:
            proba[:] = 1.0 / max(len(self.classes_), 1)
            return proba
        logp, labels = self._bound_log_probs(X)
        return self._proba_from_log_probs(logp, labels)

    def _code_scores_fast(self, row: np.ndarray) -> tuple[list, Any]:
        """Bound codes and their scores for one row (NumPy path).

        Scores are log-probabilities up to a constant: a list of Python floats
        for up to ``_PYTHON_SOFTMAX_MAX`` codes, an array beyond.
        """
        logits = self._predict_row_fast(row)
        codes = list(self.bindings_.values())
        if len(codes) <= _PYTHON_SOFTMAX_MAX:  # a few classes: Python's floats
            values = logits.tolist()
            if self.scheme_.n_groups == 1:  # one-hot: a code's score is its logit
                return codes, [values[c] for c in codes]
            columns = self.scheme_.output_columns(np.array(codes)).tolist()
            return codes, [math.fsum(values[j] for j in cols) for cols in columns]
        columns = self.scheme_.output_columns(np.array(codes))
        return codes, logits[columns].sum(axis=1, dtype=float)

    def _code_probs_fast(self, row: np.ndarray) -> tuple[list, list]:
        """Bound codes and their probabilities for one row (NumPy path)."""
        codes, scores = self._code_scores_fast(row)
        return codes, _softmax(scores)

    def _proba_one_fast(self, row: np.ndarray) -> dict:
        """:meth:`predict_proba_one` on the NumPy path, from the codes' scores."""
        codes, p = self._code_probs_fast(row)
        objects = self.class_objects_
        proba = dict.fromkeys(objects.values(), 0.0)  # every class, classes_ order
        codes_ = self.codes_
        for code, p_code in zip(codes, p):
            proba[objects[_key(codes_[code])]] = p_code
        return proba

    def _predict_one_fast(self, row: np.ndarray):
        """:meth:`predict_one` on the NumPy path, without the dict of every class.

        The class of :meth:`_proba_one_fast`'s largest probability, ties to the
        first in ``classes_`` (as ``max`` over that dict would pick).
        """
        codes, scores = self._code_scores_fast(row)
        if isinstance(scores, list):
            top = max(scores)
            i_top = scores.index(top)
            # No near-tie when the runner-up (the top's value may appear again)
            # is further than the gap: the top.
            runner = max(scores[:i_top] + scores[i_top + 1 :], default=-math.inf)
            if top - runner > _TIE_GAP * (1.0 + abs(top)):
                return self.class_objects_[_key(self.codes_[codes[i_top]])]
        # Near-ties: equal probabilities decide, as max over predict_proba_one's
        # dict would (two scores 1e-16 apart can round to the same one).
        p = _softmax(scores)
        top = max(p)
        keys = [_key(self.codes_[c]) for c, p_c in zip(codes, p) if p_c == top]
        key = keys[0] if len(keys) == 1 else min(keys, key=self.class_index_.get)
        return self.class_objects_[key]

    def _proba_from_log_probs(self, logp: np.ndarray, labels: list) -> np.ndarray:
        """Softmax over the bound codes, placed in the columns of ``classes_``."""
        proba = np.zeros((logp.shape[0], len(self.classes_)))
        logp = logp - logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        p /= p.sum(axis=1, keepdims=True)
        cols = [self._class_index(lbl) for lbl in labels]
        proba[:, cols] = p
        return proba

    def _class_index(self, label) -> int:
        return self.class_index_[_key(label)]

    def _set_feature_order(self, order: list) -> None:
        """Fix the River feature order; a C-level getter reads dicts in that order."""
        self.feature_order_ = list(order)
        self.feature_getter_ = operator.itemgetter(*order) if len(order) > 1 else None

    def _dict_to_row(self, x: dict) -> np.ndarray:
        """Vector of a River dict in the fixed feature order (missing -> 0).

        Raises ValueError if a value is NaN or infinite.
        """
        if self.feature_getter_ is not None and len(x) >= self.n_features_in_:
            try:  # fast path: every feature present and numeric
                values = self.feature_getter_(x)
                fast = self._numpy_
                # River predicts then learns each sample: the second call finds
                # the same values (a C-level tuple comparison) and reuses the row.
                if fast is not None and fast.row_memo[0] == values:
                    return fast.row_memo[1]
                # Straight to the network's dtype where it streams (rounded
                # once, as through float64). struct packs a tuple of floats ~3x
                # faster than np.fromiter; a value out of float32's range, or
                # not a number, raises and takes the general path below.
                dtype = np.float64 if fast is None else fast.dtype
                packed = _row_struct(len(values), dtype == np.float32).pack(*values)
                row = np.frombuffer(packed, dtype)  # read-only: a view of bytes
                if _all_finite(row):
                    if fast is not None:
                        fast.row_memo = (values, row)
                    return row
            except (KeyError, TypeError, ValueError, OverflowError, struct.error):
                pass
        row = np.zeros(self.n_features_in_, dtype=np.float64)
        for j, name in enumerate(self.feature_order_):
            v = x.get(name, 0.0)
            row[j] = float(v) if v is not None else 0.0
        self._check_row(row)
        return row

    def _check_row(self, row: np.ndarray) -> None:
        if not np.all(np.isfinite(row)):
            raise ValueError(
                "Input contains NaN or infinity; impute or drop those values first "
                "(e.g. river.preprocessing.StatImputer)."
            )

    # ------------------------------------------------------------ sklearn API
    @_atomic
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Meta-train on episodes from ``(X, y)``, then prime the memory with them.

        A full reset: the network is rebuilt from ``seed`` (or loaded from
        ``pretrained``), meta-trained on ``n_episodes`` episodes whose classes
        are drawn from ``y`` (labels reshuffled every episode), then a fresh
        episode starts and up to ``n_prime_per_class`` samples of every class are
        written to memory in a seeded random order, so that ``predict`` works on
        the classes of ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : MANNOneShotClassifier
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        from .training import meta_train

        self._initialize(X.shape[1])
        self._set_feature_order(
            list(getattr(self, "feature_names_in_", range(X.shape[1])))
        )
        n_episodes = self._resolved_n_episodes()
        classes, y_idx = np.unique(y, return_inverse=True)
        if n_episodes > 0:
            sampler = EpisodeSampler(
                X,
                y_idx,
                n_way=min(self.n_way, len(classes) * (4 if self.rotate_classes else 1)),
                n_per_class=self.n_per_class,
                image_shape=self.image_shape,
                rotate_classes=self.rotate_classes,
                augment=self.augment,
                scheme=self.scheme_,
            )
            self.module_.train()
            net = meta_train(
                self.module_,
                sampler,
                n_episodes=n_episodes,
                batch_size=self.batch_size,
                batches_per_epoch=max(
                    1, min(100, math.ceil(n_episodes / self.batch_size))
                ),
                optimizer=self.optimizer,
                lr=self.lr,
                clip_value=self.clip_value,
                seed=int(self.rng_.integers(2**31)),
                device=str(self._torch_device()),
                progress_bar=self.verbose > 0,
                verbose=int(self.verbose),
                compile=isinstance(self.compile, dict) or bool(self.compile),
                compile_options=self.compile
                if isinstance(self.compile, dict)
                else None,
            )
            self.module_.eval()
            self.history_ = [dict(h) for h in net.history]
        self._set_classes(classes)
        order = self._priming_order(y_idx, len(classes))
        self._write(X[order], y[order])
        return self

    def _priming_order(self, y_idx: np.ndarray, n_classes: int) -> np.ndarray:
        """Up to ``n_prime_per_class`` samples of each class, shuffled (seeded)."""
        picked = []
        for c in range(n_classes):
            members = np.flatnonzero(y_idx == c)
            picked.append(members[: self.n_prime_per_class])
        order = np.concatenate(picked)
        return order[self.rng_.permutation(order.size)]

    @_atomic
    def partial_fit(self, X, y, classes=None):
        """Write samples to memory, in order (no gradient step).

        Each row runs one network step on ``(x, label code of the previous
        learnt sample)``, commits the new memory, then binds ``y`` to a label
        code. The first call on an unfitted model builds the network (from
        ``pretrained`` if set, else seeded random weights) without meta-training.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            Every class that may appear, added to ``classes_`` (scikit-learn
            convention); optional.

        Returns
        -------
        self : MANNOneShotClassifier
        """
        first = not hasattr(self, "module_")
        if first:
            self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first)
        check_classification_targets(y)
        if first:
            self._initialize(X.shape[1])
            self._set_feature_order(
                list(getattr(self, "feature_names_in_", range(X.shape[1])))
            )
        if classes is not None:
            self._add_classes(np.asarray(classes).tolist())
        self._add_classes(y.tolist())  # Python scalars, as an array holds no objects
        self._write(X, list(y))
        return self

    def predict_proba(self, X):
        """Class probabilities from the committed memory; rows independent.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes), float64
            Columns follow ``classes_``. Probabilities are renormalised over the
            classes currently bound in memory (others get 0); each row sums to 1.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._proba_matrix(X)

    def predict(self, X):
        """Most probable class of each row (argmax of :meth:`predict_proba`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def reset_memory(self):
        """Start a new episode: wipe memory, usage, controller state and bindings.

        The slow weights and ``classes_`` are kept.

        Returns
        -------
        self : MANNOneShotClassifier
        """
        check_is_fitted(self)
        self._new_fast_state()
        return self

    # -------------------------------------------------------------- River API
    def learn_one(self, x: dict, y) -> None:
        """Write one sample to memory (River API); see :meth:`partial_fit`.

        Parameters
        ----------
        x : dict
            Features. The order is fixed (sorted keys) at the first call; missing
            features count as 0 and features first seen later are ignored.
        y : hashable
            The class; any hashable value.
        """
        fast = self.__dict__.get("_numpy_")
        if fast is not None and type(x) is dict:
            try:
                bound = _key(y) in self.bindings_
            except TypeError:  # unhashable: the general path says so
                bound = False
            if bound:
                # A class already bound to a code: nothing can fail once the
                # estimator starts to change (the row is converted, checked and
                # stepped first; binding a bound class only reorders), so no
                # snapshot to restore is needed.
                self._write_one(self._dict_to_row(x), y)
                return
        self._learn_one(x, y)

    @_atomic
    def _learn_one(self, x: dict, y) -> None:
        """:meth:`learn_one`, every case (restores the estimator if it raises)."""
        _check_dict(x, "learn_one")
        if isinstance(y, float) and math.isnan(y) or y is None:
            raise ValueError(
                f"learn_one got the label {y!r}: labels must not be NaN or None; "
                "give each sample the class it belongs to."
            )
        first = not hasattr(self, "module_")
        if first:
            self._validate_params()
            if not x:
                raise ValueError(
                    "The first sample learnt has no features: the feature set is "
                    "fixed by the first learn_one, so give it a non-empty dict."
                )
            order = sorted(x, key=_sort_key)
            row = np.array([float(x[k]) for k in order], dtype=np.float64)
            self._check_row(row)
            self._initialize(len(order))
            self._set_feature_order(order)
        else:
            row = self._dict_to_row(x)
        self._add_classes([y])
        if self._numpy_ is not None:
            self._write_one(row, y)
        else:
            self._write_torch(row[None, :], [y])

    def predict_proba_one(self, x: dict) -> dict:
        """Probabilities of every class seen (River API); ``{}`` before any learning.

        Parameters
        ----------
        x : dict

        Returns
        -------
        dict
            ``{class: probability}``, summing to 1.
        """
        _check_dict(x, "predict_proba_one")
        if not hasattr(self, "module_") or len(self.classes_) == 0:
            return {}
        row = self._dict_to_row(x)
        if self._numpy_ is not None and self.bindings_:
            return self._proba_one_fast(row)
        proba = self._proba_matrix(row[None, :])[0]
        return {
            self.class_objects_[_key(c)]: float(p) for c, p in zip(self.classes_, proba)
        }

    def predict_one(self, x: dict):
        """Most probable class (River API); ``None`` before any learning."""
        if (
            getattr(self, "_numpy_", None) is not None
            and self.bindings_
            and isinstance(x, dict)
        ):
            return self._predict_one_fast(self._dict_to_row(x))
        proba = self.predict_proba_one(x)
        if not proba:
            return None
        return max(proba, key=proba.get)

    @property
    def state_(self) -> MANNState:
        """The stream's fast state (controller, reads, memory) as tensors.

        On the CPU, streaming keeps it as NumPy arrays (``_state_``) and this
        returns tensors sharing their memory, made at each access.
        """
        return _state_tensors(self._state_)

    @state_.setter
    def state_(self, value: MANNState) -> None:
        self._state_ = value

    @property
    def _raw_memory_usage(self) -> int:
        """Bytes held, tensors included (River's accounting does not see them)."""
        if not hasattr(self, "module_"):
            return 1024
        tensors = list(self.module_.state_dict().values())
        _map_state(tensors.append, self.state_)
        return 1024 + sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------ persistence
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_numpy_", None)  # views of the weights: rebuilt on load
        if "module_" in state and state["module_"].output.weight.device.type != "cpu":
            # Saved from an accelerator: store CPU tensors so any machine can load it.
            state["module_"] = copy.deepcopy(state["module_"]).cpu()
            state["_state_"] = _map_state(lambda t: t.detach().cpu(), state["_state_"])
        return state

    def __setstate__(self, state):
        if "state_" in state:  # pickled before the state moved to ``_state_``
            state = dict(state)
            state["_state_"] = state.pop("state_")
        self.__dict__.update(state)
        if "module_" in state:
            dev = torch.device(self.device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                warnings.warn(
                    f"Model saved with device={self.device!r}, but CUDA is not "
                    "available: "
                    "loaded on the CPU (device set to 'cpu').",
                    UserWarning,
                    stacklevel=2,
                )
                self.device = "cpu"
                dev = torch.device("cpu")
            if dev.type != "cpu":
                self.module_ = self.module_.to(dev)
                self._state_ = _map_state(
                    lambda t: t.to(dev), _state_tensors(self._state_)
                )
            self._make_fast_path()


_INTERNAL_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep
    for m in (sys.modules[__name__.rpartition(".")[0]], torch, sys.modules["sklearn"])
)


@functools.cache
def _row_struct(n: int, single: bool) -> struct.Struct:
    """Packer of ``n`` floats as float32 (``single``) or float64."""
    return struct.Struct(f"{n}{'f' if single else 'd'}")


def _all_finite_numpy(row: np.ndarray) -> bool:
    return bool(np.isfinite(row).all())


#: Whether a 1-D row holds no NaN or infinity (one compiled pass where numba is).
_all_finite = _jit_step.all_finite if _jit_step.AVAILABLE else _all_finite_numpy


def _softmax(scores) -> list:
    """Probabilities of a list of float scores (Python floats) or an array."""
    if isinstance(scores, list):
        top = max(scores)
        p = [math.exp(v - top) for v in scores]
        total = math.fsum(p)
        return [v / total for v in p]
    p = np.exp(scores - scores.max())
    return (p / p.sum()).tolist()


def _check_dict(x, method: str) -> None:
    if not isinstance(x, dict):
        raise TypeError(
            f"{method} expects a dict of features (River API), got "
            f"{type(x).__name__}; use the scikit-learn methods for arrays."
        )


def _key(label):
    """Dictionary key of a label, with Python's dict semantics.

    Numpy scalars become Python scalars, so ``np.int64(1)`` and ``1`` are one
    class, and so are ``True`` and ``1`` (River's dicts could not tell them
    apart either).
    """
    if isinstance(label, np.generic):
        return label.item()
    return label


def _warn_stacklevel() -> int:
    """Stack level of the first frame outside sk_mann, torch and scikit-learn."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame = frame.f_back
        level += 1
    return level
