"""ResNet-18 on Fashion-MNIST with TensorFlow 2 / Keras 3 (see :mod:`common.backend`)."""
import os

# TensorFlow's C++ start-up notices (oneDNN, CPU features, CUDA probing) drown the
# chapter's output; hide them unless the user chose a log level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .model import *  # noqa: E402,F401,F403
from .data import *  # noqa: E402,F401,F403
from .train import *  # noqa: E402,F401,F403
from . import distributed  # noqa: E402,F401  (data-parallel training: resnet_tf.distributed)
