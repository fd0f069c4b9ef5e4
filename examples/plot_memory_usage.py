"""
==============================================
Inside the LRUA memory during one episode
==============================================

What does the memory of a MANN do while it learns new classes? This example
runs one episode through the network of a fitted
:class:`~sk_mann.MANNOneShotClassifier`, step by step with the engine's
``step(inputs, state)`` function (:mod:`sk_mann.model`), and draws the state of
the Least-Recently-Used-Access memory (:mod:`sk_mann.memory`) after every step:

- the **usage** :math:`w^u_t` of every slot, which decays by ``gamma`` at every
  step and grows where the heads read and write (eq. 5);
- the **read weights** :math:`w^r_t` of the first head: a softmax of cosine
  similarities over all slots (eq. 3);
- the **least-used mask** :math:`w^{lu}_t`: the ``n_reads`` slots with the
  lowest usage (eq. 6), where the next step can write fresh content.

See the user guide for the equations.
"""

# %%
# A small meta-trained network
# ----------------------------
# Meta-trained for a few seconds on five digit classes, with 2 read heads and a
# memory of 24 slots so that the pictures stay readable.
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

from sk_mann import MANNOneShotClassifier
from sk_mann.episodes import EpisodeSampler

# A network this small runs fastest on one CPU thread: with more, the threads'
# synchronisation costs more than the arithmetic.
torch.set_num_threads(1)

X, y = load_digits(return_X_y=True)
X = X / 16.0

clf = MANNOneShotClassifier(
    controller_size=32,
    n_slots=24,
    slot_size=16,
    n_reads=2,
    n_per_class=5,
    n_episodes=800,
    lr=3e-3,
    seed=0,
).fit(X[y < 5], y[y < 5])

# %%
# One episode of new classes, step by step
# ----------------------------------------
# An episode of the paper's protocol drawn from the five other digits: 5
# classes x 5 samples, shuffled, with a random label code per class. At step
# ``t`` the network gets ``[x_t ; label code of step t-1]``.
sampler = EpisodeSampler(X[y >= 5], y[y >= 5], n_way=5, n_per_class=5)
episode = sampler.sample(1, np.random.default_rng(1))
T = episode.x.shape[1]

module = clf.module_
state = module.initial_state(1)  # a wiped memory
usage, read_w, least_used, correct = [], [], [], []
with torch.no_grad():
    for t in range(T):
        inputs = np.concatenate([episode.x[0, t], episode.label_in[0, t]])
        logits, state = module.step(torch.from_numpy(inputs)[None], state)
        mem = state.memory  # a sk_mann.memory.MemoryState
        usage.append(mem.usage[0].numpy().copy())
        read_w.append(mem.read_weights[0, 0].numpy().copy())
        least_used.append(mem.least_used[0].numpy().copy())
        correct.append(int(logits.argmax()) == episode.codes[0, t])

usage, read_w, least_used = map(np.array, (usage, read_w, least_used))
print("accuracy per step:", "".join("x" if ok else "." for ok in correct))

# %%
# The memory after every step
# ---------------------------
# Rows are steps, columns are memory slots. The label on the left is the
# step's class and its instance number in the episode; a check mark means the
# network predicted the step's label code correctly.
#
# - At the start every usage is 0 and the ties go to the lowest slot indices:
#   the first writes land in slots 0 and 1.
# - Each step writes mostly to the slots marked least-used at the previous
#   step, so new content spreads over fresh slots while the usage of old slots
#   decays.
# - The read weights have no sharpening: the softmax of cosine similarities in
#   [-1, 1] keeps every slot in play, with more weight on the slots holding
#   similar content.
names = [
    f"{c} #{k} {'✓' if ok else ' '}"
    for c, k, ok in zip(
        sampler.class_values[episode.classes[0]], episode.instance[0], correct
    )
]
panels = [
    ("usage $w^u_t$", usage, "viridis"),
    ("read weights $w^r_t$ (head 1)", read_w, "magma"),
    ("least-used mask $w^{lu}_t$", least_used, "Greys"),
]
fig, axes = plt.subplots(1, 3, figsize=(10, 7), sharey=True)
for ax, (title, values, cmap) in zip(axes, panels):
    im = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("memory slot")
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
axes[0].set_yticks(np.arange(T), names, fontsize=7)
axes[0].set_ylabel("step: class #instance")
fig.tight_layout()
plt.show()
