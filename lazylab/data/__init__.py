"""Datasets: synthetic teacher tasks and small real datasets that ship with our dependencies.

All loaders return tensors ``(X, y)`` (float32 inputs) and take a ``seed`` or a
``torch.Generator`` so the same seed gives the same data.
"""

from lazylab.data.cifar import cifar10
from lazylab.data.digits import digits
from lazylab.data.mnist import mnist
from lazylab.data.synthetic import gaussian, sphere, teacher_two_layer

__all__ = ["sphere", "gaussian", "teacher_two_layer", "digits", "cifar10", "mnist"]
