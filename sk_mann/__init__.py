"""sk_mann: one-shot learning with Memory-Augmented Neural Networks."""

__version__ = "0.1.0"
