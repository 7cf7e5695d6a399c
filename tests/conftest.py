"""One test suite for every backend: RESNET_BACKEND (set by tox) picks the package.

Tests of ``common`` run everywhere; tests that take the ``backend`` fixture are skipped when
no backend is chosen. The few places where the chapter's code differs per framework sit in
``tests/chapter_<backend>.py`` (same functions in each), reached through ``chapter``.
"""
import importlib
import os

import numpy as np
import pytest

from helpers import real_data_dir

BACKEND = os.environ.get("RESNET_BACKEND", "")
# Every fast path, always, unless the environment says otherwise: a test must not depend on what
# a measurement picked on this machine (tests/test_autotune.py measures in a cache of its own).
os.environ.setdefault("RESNET_FAST_PATHS", "fast")

#: Where the framework-free tests (those that take no backend) run: once on numpy 2.x (torch's
#: environment) and once on numpy 1.23 (mx's), and wherever no backend is chosen. tf's and jax's
#: environments (numpy 2.x again) skip them to keep CI short.
FRAMEWORK_FREE_IN = ("", "torch", "mx")


def pytest_report_header(config):
    return f"RESNET_BACKEND={BACKEND or '(none: backend tests skipped)'}"


def pytest_collection_modifyitems(config, items):
    """The markers, handled here once (pyproject.toml declares them):

    * ``backend(*names)``: runs only where RESNET_BACKEND is one of ``names`` (and there even when it
      takes no backend: the onnx environment's framework-free tests);
    * ``compile_heavy(*names)``: in those backends' environments, only adds compiling to what other
      cases check (XLA's ResNet-101): skipped there unless RESNET_ALL_FAMILIES=1;
    * tests that take no backend (framework-free) run only where :data:`FRAMEWORK_FREE_IN` says.
    """
    free_skip = pytest.mark.skip(reason=f"framework-free: run in the {' and '.join(FRAMEWORK_FREE_IN[1:])} "
                                        "environments")
    all_families = os.environ.get("RESNET_ALL_FAMILIES") == "1"
    for item in items:
        backends = item.get_closest_marker("backend")
        if backends is not None and BACKEND not in backends.args:
            item.add_marker(pytest.mark.skip(reason=f"RESNET_BACKEND={'|'.join(backends.args)} only"))
        heavy = item.get_closest_marker("compile_heavy")
        if heavy is not None and BACKEND in heavy.args and not all_families:
            item.add_marker(pytest.mark.skip(reason=f"only adds compiling in {BACKEND}: RESNET_ALL_FAMILIES=1 runs it"))
        chosen = backends is not None and BACKEND in backends.args  # marked for this environment
        if BACKEND not in FRAMEWORK_FREE_IN and not chosen and "backend_name" not in getattr(item, "fixturenames", ()):
            item.add_marker(free_skip)


@pytest.fixture(autouse=True)
def _graph_executor_in_tf(request, monkeypatch):
    # Tests of the training loop and the command line (not of what a network or a step computes)
    # run TensorFlow's graph executor, which builds a Trainer several times faster than XLA. Both
    # paths are held to the oracle elsewhere (test_model, test_families, test_training's step tests).
    if BACKEND == "tf" and request.node.get_closest_marker("graph_executor") is not None:
        monkeypatch.setenv("RESNET_FAST_PATHS", "native")


@pytest.fixture(scope="session")
def backend_name():
    if not BACKEND:
        pytest.skip("no backend chosen: set RESNET_BACKEND=torch|tf|mx|jax (tox -e torch|tf|mx|jax does)")
    return BACKEND


@pytest.fixture(scope="session")
def backend(backend_name):
    from common.backend import load_backend

    return load_backend(backend_name)


@pytest.fixture(scope="session")
def chapter(backend_name, backend):
    """The chapter's own code for this framework (tests/chapter_<backend>.py).

    The backend package is imported first, as it may set up its framework before the
    framework's first import (resnet_mx sets MXNet's thread count).
    """
    return importlib.import_module(f"chapter_{backend_name}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def real_data():
    return real_data_dir()
