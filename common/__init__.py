"""Framework-free parts shared by every backend: architecture, hyperparameters, initial
weights, Fashion-MNIST, the NumPy oracle, the training loop and the command line."""

__version__ = "0.1.0"
