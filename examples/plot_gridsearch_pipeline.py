"""
=========================================================
Model selection on held-out classes with ``GridSearchCV``
=========================================================

A meta-learner is judged on classes it has *never* been meta-trained on: how
well does it recognise the 2nd sample of a new class, after seeing one
labelled example of it? This example tunes a
:class:`~sk_mann.MANNOneShotClassifier` inside a scikit-learn ``Pipeline``
with ``GridSearchCV``, so that:

- the cross-validation splits the data **by class** (``GroupKFold`` with
  ``groups=y``): every test fold holds only classes absent from its training
  fold;
- the score is the paper's **per-instance accuracy** at the 2nd instance,
  measured on episodes drawn from the test fold
  (:func:`sk_mann.episodic_scorer`), not plain accuracy.

The data are scikit-learn's bundled 8x8 digits (no download). To run in
seconds, the networks are tiny and meta-trained on a few hundred to a few
thousand episodes of five digit classes, against the paper's 100,000 episodes
of 1200 Omniglot characters, so expect accuracies only modestly above chance.
The point is the mechanics.
"""

# %%
# Data and pipeline
# -----------------
# Ten digit classes. ``GroupKFold(n_splits=2)`` with ``groups=y`` gives two
# folds of five classes each: meta-train on five digits, evaluate on the other
# five. Five classes per fold also match ``n_way=5``, the number of classes in
# a meta-training episode and of one-hot label codes.
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sk_mann import MANNOneShotClassifier, episodic_scorer

# A network this small runs fastest on one CPU thread: with more, the threads'
# synchronisation costs more than the arithmetic.
torch.set_num_threads(1)

X, y = load_digits(return_X_y=True)

pipe = make_pipeline(
    StandardScaler(),
    MANNOneShotClassifier(
        controller_size=32,
        n_slots=32,
        slot_size=16,
        n_reads=1,
        n_way=5,
        n_per_class=5,  # episodes of 5 classes x 5 samples = 25 steps
        batch_size=16,
        lr=3e-3,
        seed=0,
    ),
)

# %%
# The scorer
# ----------
# :func:`~sk_mann.episodic_scorer` returns ``scorer(estimator, X, y)``: it draws
# ``n_episodes`` episodes of the paper's protocol from the test fold ``(X, y)``
# and runs them through the fitted network, each from a wiped memory, and
# returns the accuracy at the given instance. Given a pipeline, it passes the
# test fold through the pipeline's first steps and scores the MANN at its end.
mann_scorer = episodic_scorer(2, n_episodes=200, seed=0)

# %%
# Grid search
# -----------
# We compare two controller sizes and two meta-training budgets (number of
# episodes). ``refit=False``: we only want the comparison, not a final model.
param_grid = {
    "mannoneshotclassifier__controller_size": [32, 64],
    "mannoneshotclassifier__n_episodes": [200, 1600],
}
search = GridSearchCV(
    pipe,
    param_grid,
    cv=GroupKFold(n_splits=2),
    scoring=mann_scorer,
    n_jobs=2,
    refit=False,
)
search.fit(X, y, groups=y)

print("best parameters:", search.best_params_)
print(f"best 2nd-instance accuracy: {search.best_score_:.3f}")
for params, mean, std in zip(
    search.cv_results_["params"],
    search.cv_results_["mean_test_score"],
    search.cv_results_["std_test_score"],
):
    short = {k.split("__")[1]: v for k, v in params.items()}
    print(f"{short}: {mean:.3f} +- {std:.3f}")

# %%
# Cross-validated scores
# ----------------------
# Chance is 1/5 for the 2nd instance of a class in a 5-way episode. More
# meta-training episodes help; far more than fit in this example are needed
# to approach the paper's one-shot accuracy (see the benchmarks page and the
# shipped ``pretrained`` weights).
results = search.cv_results_
labels = [
    f"controller {p['mannoneshotclassifier__controller_size']}\n"
    f"{p['mannoneshotclassifier__n_episodes']} episodes"
    for p in results["params"]
]
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(
    np.arange(len(labels)),
    results["mean_test_score"],
    yerr=results["std_test_score"],
    capsize=4,
    color="tab:blue",
)
ax.axhline(1 / 5, ls="--", color="grey", label="chance (1/5)")
ax.set_xticks(np.arange(len(labels)), labels, fontsize=8)
ax.set_ylabel("2nd-instance accuracy\non unseen classes")
ax.set_ylim(0, 1)
ax.set_title("GroupKFold(2) by class: mean ± std over the folds")
ax.legend(loc="upper left")
fig.tight_layout()
plt.show()
