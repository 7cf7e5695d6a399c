"""ResNet-18 on Fashion-MNIST with TensorFlow 2 / Keras 3 (the contract: :mod:`common.contract`)."""
import os

# TensorFlow's C++ start-up notices (oneDNN, CPU features, CUDA probing) drown the
# chapter's output; hide them unless the user chose a log level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.backend import lazy_exports  # noqa: E402

# The names of model, data and train, and the framework with them, load on first use (PEP 562):
# resnet_tf.launch, which the launcher needs, imports without the framework.
__getattr__, __dir__ = lazy_exports(__name__)
