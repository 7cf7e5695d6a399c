"""The backend contract (common/contract.py), checked against the backend of this environment."""
import pytest

from common import contract
from common.backend import backend_part


@pytest.mark.parametrize("part", list(contract.PARTS))
def test_the_backend_keeps_the_contract(backend_name, part):
    problems = contract.check(part, backend_part(backend_name, part))
    assert not problems, "\n".join(problems)


def test_the_package_reexports_model_data_and_train(backend_name, backend):
    for part in contract.EXPORTED_PARTS:
        for name in backend_part(backend_name, part).__all__:
            assert getattr(backend, name) is getattr(backend_part(backend_name, part), name), name
    assert callable(backend.train) and backend.kernels is backend_part(backend_name, "kernels")


def test_the_check_names_what_a_backend_lacks():
    """A module without a contract name, with a changed signature and with its names out of order
    is refused, one line for each."""
    class Fake:
        __name__ = "resnet_fake.data"
        __all__ = ["to_numpy", "to_tensor"]

        @staticmethod
        def to_tensor(array, device="cpu"):
            pass

        @staticmethod
        def to_numpy(tensor):
            pass

    problems = contract.check("data", Fake)
    assert any("lacks 'load_data_fashion_mnist'" in line for line in problems), problems
    assert any("to_tensor(array, device='cpu')" in line and "device=None" in line for line in problems), problems
    assert any("__all__ lacks load_data_fashion_mnist" in line for line in problems), problems
