"""sk_mann: one-shot learning with Memory-Augmented Neural Networks.

A MANN with Least-Recently-Used-Access memory (Santoro et al. 2016) as one
estimator, :class:`MANNOneShotClassifier`, usable from scikit-learn and River.
"""

from .classifier import MANNOneShotClassifier
from .datasets import fetch_omniglot
from .metrics import episodic_scorer, evaluate_per_instance, per_instance_accuracy

__version__ = "0.1.0"

__all__ = [
    "MANNOneShotClassifier",
    "__version__",
    "episodic_scorer",
    "evaluate_per_instance",
    "fetch_omniglot",
    "per_instance_accuracy",
]
