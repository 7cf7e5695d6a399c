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

def pytest_report_header(config):
    return f"RESNET_BACKEND={BACKEND or '(none: backend tests skipped)'}"


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
