"""
=====================================================
Learning new classes from a stream, side by side
=====================================================

A stream brings samples of classes nobody has seen before, one at a time. For
every sample each model first **predicts**, then **learns** it (River's
predict-then-learn protocol). Three models learn side by side:

- the MANN with the most accurate shipped weights, meta-trained on Omniglot
  characters (:class:`~sk_mann.MANNOneShotClassifier` with
  ``pretrained="omniglot_5way_add_ks"``, which writes add vectors and sharpens
  its reads with key strengths; the paper's own network is
  ``"omniglot_5way"``): ``learn_one`` writes the sample to its memory, without
  any gradient step;
- River's :class:`river.neighbors.KNNClassifier` (1 neighbour);
- scikit-learn's :class:`~sklearn.neighbors.KNeighborsClassifier`
  (1 neighbour), refit on everything seen so far before each prediction.

The stream is cut into episodes of 5 classes x 10 samples, the protocol of the
paper; between episodes every model starts afresh (``reset_memory()`` for the
MANN). We then measure **per-instance accuracy**: the accuracy on the 1st,
2nd, ... appearance of a class within its episode.

The data are the Omniglot characters held out from meta-training (ids
1201-1623), when the Omniglot zips are on the machine (see
:func:`sk_mann.fetch_omniglot`); otherwise scikit-learn's bundled digits,
converted to the 20x20 format the network reads.
"""

# %%
# Data: new classes, in the network's input format
# ------------------------------------------------
# The shipped network reads 20x20 images, strokes 1 and background 0, scaled so
# that the brightest pixel is 1, flattened to 400 features.
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from river import neighbors
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

from sk_mann import MANNOneShotClassifier, fetch_omniglot, per_instance_accuracy
from sk_mann.episodes import instance_index


def digits_as_20x20():
    """scikit-learn's 8x8 digits as 20x20 images (16x16 digit, 2-pixel margin)."""
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32))[:, None]
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    images = F.pad(images, (2, 2, 2, 2))[:, 0].numpy()
    images /= images.reshape(len(images), -1).max(axis=1)[:, None, None]
    return images.reshape(len(images), -1), digits.target


try:
    X, y = fetch_omniglot(subset="test", download_if_missing=False, return_X_y=True)
    source = "held-out Omniglot characters"
except OSError:  # the Omniglot zips are not on this machine
    X, y = digits_as_20x20()
    source = "scikit-learn digits (20x20)"
print(f"{source}: {X.shape[0]} images of {len(np.unique(y))} classes")

# %%
# The stream
# ----------
# Each episode draws 5 classes and 10 samples of each, shuffled. Labels are
# the datasets' own class ids.
N_EPISODES, N_WAY, N_PER_CLASS = 40, 5, 10
rng = np.random.default_rng(0)
members = {c: np.flatnonzero(y == c) for c in np.unique(y)}


def draw_episode():
    classes = rng.choice(list(members), size=N_WAY, replace=False)
    idx = np.concatenate(
        [rng.choice(members[c], size=N_PER_CLASS, replace=False) for c in classes]
    )
    return rng.permutation(idx)


episodes = [draw_episode() for _ in range(N_EPISODES)]

fig, axes = plt.subplots(2, 10, figsize=(8, 2.3), layout="constrained")
for ax, i in zip(axes.ravel(), episodes[0][:20]):
    ax.imshow(X[i].reshape(20, 20), cmap="gray_r")
    ax.set_title(str(y[i]), fontsize=7)
    ax.axis("off")
fig.suptitle("The first 20 steps of the first episode (title: class)", fontsize=9)
plt.show()

# %%
# Predict, then learn
# -------------------
# River models take a dict per sample; the MANN fixes its feature order from
# the first dict it learns (sorted keys: pixels 0..399). ``predict_one`` never
# changes the MANN; ``learn_one`` writes one sample to its memory.
# ``from_pretrained`` reads the architecture parameters (here
# ``write_content="add", key_strength=True``) from the weights file.
mann = MANNOneShotClassifier.from_pretrained("omniglot_5way_add_ks", seed=0)

names = ("MANN (pretrained)", "River KNN", "scikit-learn KNN")
correct = {name: np.zeros((N_EPISODES, N_WAY * N_PER_CLASS), bool) for name in names}
seconds = dict.fromkeys(names, 0.0)
for e, idx in enumerate(episodes):
    if e > 0:
        mann.reset_memory()  # a new episode: wipe the memory and the bindings
    river_knn = neighbors.KNNClassifier(n_neighbors=1)
    seen_X, seen_y = [], []
    for t, i in enumerate(idx):
        x, label = dict(enumerate(X[i].tolist())), y[i]

        start = time.perf_counter()
        correct["MANN (pretrained)"][e, t] = mann.predict_one(x) == label
        mann.learn_one(x, label)
        seconds["MANN (pretrained)"] += time.perf_counter() - start

        start = time.perf_counter()
        correct["River KNN"][e, t] = river_knn.predict_one(x) == label
        river_knn.learn_one(x, label)
        seconds["River KNN"] += time.perf_counter() - start

        start = time.perf_counter()
        if seen_y:  # refit on everything seen in the episode, then predict
            # (exact search; a tree is cheap to rebuild for a few dozen samples)
            knn = KNeighborsClassifier(n_neighbors=1, algorithm="kd_tree")
            knn.fit(seen_X, seen_y)
            correct["scikit-learn KNN"][e, t] = knn.predict(X[i][None, :])[0] == label
        seen_X.append(X[i])
        seen_y.append(label)
        seconds["scikit-learn KNN"] += time.perf_counter() - start

n_steps = N_EPISODES * N_WAY * N_PER_CLASS
for name in names:
    print(f"{name:>18}: {1e3 * seconds[name] / n_steps:.2f} ms per predict + learn")

# %%
# Per-instance accuracy
# ---------------------
# The 1st instance of a class is (nearly) always wrong: no model can name a
# class it has not stored yet. (The exception: right after ``reset_memory()``
# nothing is bound, and the MANN's probabilities are uniform over every class
# it has ever seen -- a lucky guess when classes recur, as digits do.) From the
# 2nd instance on, a model that learns in one shot can be right. The paper's
# 1st-instance accuracy is measured on label codes instead of classes, see
# :func:`sk_mann.evaluate_per_instance` and the user guide.
#
# The two nearest-neighbour models find the same exact nearest neighbour, so
# their curves coincide. Error bars are 95% confidence intervals over episodes.
instance = instance_index(np.array([y[idx] for idx in episodes]))
instances = tuple(range(1, N_PER_CLASS + 1))
fig, ax = plt.subplots(figsize=(7, 4))
styles = {
    "MANN (pretrained)": {"marker": "o", "lw": 2},
    "River KNN": {"marker": "s", "lw": 4, "alpha": 0.5},
    "scikit-learn KNN": {"marker": "x", "ls": "--"},
}
for name, ok in correct.items():
    res = per_instance_accuracy(ok, instance, instances=instances)
    acc = 100 * np.array(res["accuracy"])
    ax.errorbar(
        instances,
        acc,
        yerr=100 * np.array(res["ci95"]),
        capsize=3,
        label=name,
        **styles[name],
    )
    print(f"{name:>18}: " + " ".join(f"{a:5.1f}" for a in acc))
ax.set_xlabel("instance of the class in its episode")
ax.set_ylabel("accuracy (%)")
ax.set_xticks(instances)
ax.set_ylim(-2, 102)
ax.set_title(f"{N_EPISODES} episodes of {N_WAY} new classes: {source}", fontsize=9)
ax.legend(loc="lower right")
fig.tight_layout()
plt.show()
