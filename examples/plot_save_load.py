"""
====================================================
Saving and loading a model in the middle of a stream
====================================================

A :class:`~sk_mann.MANNOneShotClassifier` carries two kinds of state: the slow
weights learnt by meta-training, and the fast state of the current episode --
the memory, its usage, the controller state and which class is bound to which
label code. ``joblib.dump`` (or ``pickle``) saves both. A model saved in the
middle of a stream and loaded back predicts exactly what the original predicts,
and continuing the stream on both gives identical results.
"""

# %%
# A small meta-trained model
# --------------------------
# We meta-train a small network on five digit classes (a few seconds), then
# start a fresh episode for the other five digits, which it has never seen.
import tempfile
from pathlib import Path

import joblib
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

from sk_mann import MANNOneShotClassifier

# A network this small runs fastest on one CPU thread: with more, the threads'
# synchronisation costs more than the arithmetic.
torch.set_num_threads(1)

X, y = load_digits(return_X_y=True)
X = X / 16.0  # pixel intensities in [0, 1]

clf = MANNOneShotClassifier(
    controller_size=32,
    n_slots=32,
    slot_size=16,
    n_reads=1,
    n_per_class=5,
    n_episodes=320,
    lr=3e-3,
    seed=0,
)
clf.fit(X[y < 5], y[y < 5])
clf.reset_memory()  # a new episode for the new classes

# %%
# The first half of a stream
# --------------------------
# The stream holds digits 5 to 9; digit 9 appears only in its second half.
# Each sample is predicted, then learnt (River API: one dict per sample).
rng = np.random.default_rng(0)
first = rng.permutation(np.flatnonzero((y >= 5) & (y < 9)))[:30]
second = rng.permutation(np.flatnonzero(y >= 5))[:30]


def as_dict(row):
    return dict(enumerate(row.tolist()))


hits_before = []
for i in first:
    hits_before.append(clf.predict_one(as_dict(X[i])) == y[i])
    clf.learn_one(as_dict(X[i]), y[i])

# %%
# Save, load, compare
# -------------------
# Tensors are stored as CPU tensors, so the file loads on any machine.
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "mann.joblib"
    joblib.dump(clf, path)
    print(f"saved {path.stat().st_size / 1024:.0f} KiB")
    loaded = joblib.load(path)

queries = X[second]
proba_original = clf.predict_proba(queries)
proba_loaded = loaded.predict_proba(queries)
print("identical probabilities:", np.array_equal(proba_original, proba_loaded))
# Digits 0-4 are still known (``classes_``), but the memory was reset after
# ``fit``: only the classes of this episode have a non-zero probability.
proba = loaded.predict_proba_one(as_dict(X[second[0]]))
print("classes seen:", loaded.classes_)
print("classes bound in memory:", [int(c) for c, p in proba.items() if p > 0])

# %%
# Continue the stream on both
# ---------------------------
# Both models now learn the second half of the stream, digit 9 included, which
# gets a label code only now. Their predictions stay identical, and so do their
# memories at the end.
hits_original, hits_loaded = [], []
for i in second:
    x = as_dict(X[i])
    hits_original.append(clf.predict_one(x) == y[i])
    hits_loaded.append(loaded.predict_one(x) == y[i])
    clf.learn_one(x, y[i])
    loaded.learn_one(x, y[i])

print("identical predictions:", hits_original == hits_loaded)
print(
    "identical memories:",
    torch.equal(clf.state_.memory.memory, loaded.state_.memory.memory),
)

# %%
# Running accuracy of the stream, before and after the save point. The loaded
# copy (dashed) continues exactly where the original (solid) is.
steps_before = np.arange(1, len(first) + 1)
steps_after = np.arange(len(first) + 1, len(first) + len(second) + 1)
running_before = np.cumsum(hits_before) / steps_before
total_before = np.sum(hits_before)
running_original = (total_before + np.cumsum(hits_original)) / steps_after
running_loaded = (total_before + np.cumsum(hits_loaded)) / steps_after

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(steps_before, running_before, color="tab:blue", label="original")
ax.plot(steps_after, running_original, color="tab:blue")
ax.plot(steps_after, running_loaded, "--", color="tab:orange", lw=2.5, label="loaded")
ax.axvline(len(first) + 0.5, color="grey", ls=":", label="joblib.dump / load")
ax.set_xlabel("samples of the stream")
ax.set_ylabel("running accuracy")
ax.set_ylim(0, 1)
ax.legend(loc="upper left")
fig.tight_layout()
plt.show()
