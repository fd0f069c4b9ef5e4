"""Label codes: one-hot and the paper's 5-character string labels.

A label code is an integer ``0 <= code < n_codes``. It is written as
``n_groups`` digits in base ``group_size`` and presented to the network as
``n_groups`` concatenated one-hot vectors (``n_groups * group_size`` inputs).
The network outputs the same number of logits, read as ``n_groups``
independent ``group_size``-way softmaxes.

- one-hot labels: ``n_groups=1, group_size=n_way`` (``n_way`` codes);
- string labels: ``n_groups=5, group_size=5`` (``5**5 = 3125`` codes), section 4.1
  of Santoro et al. (2016).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LabelScheme", "make_label_scheme"]


@dataclass(frozen=True)
class LabelScheme:
    """How label codes are encoded as network inputs and decoded from outputs.

    Parameters
    ----------
    n_groups : int
        Number of characters (one-hot groups) in a code.
    group_size : int
        Size of each one-hot group.
    """

    n_groups: int
    group_size: int

    @property
    def n_codes(self) -> int:
        """Number of distinct codes, ``group_size ** n_groups``."""
        return int(self.group_size**self.n_groups)

    @property
    def width(self) -> int:
        """Number of network inputs (and outputs) a code takes."""
        return self.n_groups * self.group_size

    def digits(self, codes: np.ndarray) -> np.ndarray:
        """Digits of each code, most significant first.

        Shape ``codes.shape + (n_groups,)``.
        """
        codes = np.asarray(codes, dtype=np.int64)
        powers = self.group_size ** np.arange(self.n_groups - 1, -1, -1)
        return (codes[..., None] // powers) % self.group_size

    def output_columns(self, codes: np.ndarray) -> np.ndarray:
        """Logit column of each digit of each code, shape ``codes.shape + (n_groups,)``.

        ``logits[..., output_columns(codes)].sum(-1)`` scores the codes: it is
        their log-probability up to a constant shared by all codes, so a
        softmax of these scores over a set of codes is the probability
        renormalised over that set.

        Examples
        --------
        >>> LabelScheme(2, 5).output_columns(np.array([0, 7]))
        array([[0, 5],
               [1, 7]])
        """
        if self.n_groups == 1:  # one-hot: the code is its column
            return np.asarray(codes, dtype=np.int64)[..., None]
        return self.digits(codes) + self.group_size * np.arange(self.n_groups)

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """Concatenated one-hots of ``codes``, shape ``codes.shape + (width,)``.

        A code of ``-1`` encodes to all zeros (the null label of the first step).
        """
        codes = np.asarray(codes, dtype=np.int64)
        out = np.zeros(codes.shape + (self.n_groups, self.group_size), dtype=np.float32)
        valid = codes >= 0
        d = self.digits(np.where(valid, codes, 0))
        np.put_along_axis(out, d[..., None], 1.0, axis=-1)
        out *= valid[..., None, None]
        return out.reshape(codes.shape + (self.width,))

    @functools.lru_cache(maxsize=4096)  # schemes are few, frozen and hashable
    def encode_one(self, code: int) -> np.ndarray:
        """:meth:`encode` of one code, shape ``(1, width)``; cached and read-only."""
        vec = self.encode(np.array([code]))
        vec.flags.writeable = False
        return vec

    def code_log_probs(self, logits: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
        """Log-probability of each of ``codes`` under ``logits``.

        Parameters
        ----------
        logits : Tensor of shape (..., width)
        codes : array of shape (n,)

        Returns
        -------
        Tensor of shape (..., n)
            Sum over groups of the log-softmax of each code's digit.
        """
        shape = logits.shape[:-1]
        logp = torch.log_softmax(
            logits.reshape(*shape, self.n_groups, self.group_size), dim=-1
        )
        d = torch.as_tensor(self.digits(codes), device=logits.device)  # (n, G)
        group_idx = torch.arange(self.n_groups, device=logits.device)
        return logp[..., group_idx.unsqueeze(0), d].sum(dim=-1)

    def code_log_probs_numpy(self, logits: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """NumPy version of :meth:`code_log_probs`, in float64."""
        shape = logits.shape[:-1]
        z = np.asarray(logits, dtype=np.float64).reshape(
            *shape, self.n_groups, self.group_size
        )
        z = z - z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        d = self.digits(codes)  # (n, G)
        return logp[..., np.arange(self.n_groups)[None, :], d].sum(axis=-1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy summed over groups, averaged over all other axes.

        Parameters
        ----------
        logits : Tensor of shape (..., width)
        targets : LongTensor of shape (..., n_groups)
            Digits of the target codes.
        """
        flat = logits.reshape(-1, self.group_size)
        ce = torch.nn.functional.cross_entropy(
            flat, targets.reshape(-1), reduction="sum"
        )
        return ce / (targets.numel() // self.n_groups)

    def predict_digits(self, logits: torch.Tensor) -> torch.Tensor:
        """Most probable digit of each group, shape ``logits.shape[:-1] + (G,)``."""
        shape = logits.shape[:-1]
        return logits.reshape(*shape, self.n_groups, self.group_size).argmax(dim=-1)


def make_label_scheme(labels: str, n_way: int) -> LabelScheme:
    """Return the :class:`LabelScheme` for ``labels`` in ``{"onehot", "string"}``."""
    if labels == "onehot":
        return LabelScheme(1, int(n_way))
    if labels == "string":
        return LabelScheme(5, 5)
    raise ValueError(f"labels={labels!r} is not supported; use 'onehot' or 'string'.")
