"""tox's plugin for this project (tox 4 loads ``toxfile.py`` from the project's root by itself).

Two environments need an interpreter of their own (``base_python`` in tox.ini): MXNet's Python
3.11 (numpy 1.23.5, which mxnet 1.9.1 needs, has no wheels for newer Pythons) and JAX's Python 3.12
(jax >= 0.11 needs it). Where one is missing, tox alone says only that it "could not find python
interpreter matching any of the specs"; this says which environment needs which Python, and how
to get it, first.
"""
from __future__ import annotations

import subprocess
import sys

from tox.plugin import impl

HOW_TO_GET = ("with pyenv: pyenv install {version} (this repository's .python-version then puts python3.11 and "
              "python3.12 on PATH in its folder); elsewhere, your system's python{version} package, or python.org")


def _runs(executable: str) -> bool:
    try:
        return subprocess.run([executable, "-c", ""], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@impl
def tox_add_env_config(env_conf, state):
    for spec in env_conf["base_python"] or []:
        if spec.startswith("python3.") and not _runs(spec):
            version = spec[len("python"):]
            print(f"tox: the {env_conf.name} environment needs Python {version} ({spec}), which does not run here; "
                  f"get it {HOW_TO_GET.format(version=version)}", file=sys.stderr)
