"""Which exceptions are the infrastructure's, and which CUDA device an evaluator uses."""

import pytest
import torch
from ray.exceptions import NodeDiedError, RayTaskError

from ajpq.run.evaluator import cuda_index
from ajpq.run.infra import is_infra_error


def _raised_in_a_task(error: BaseException) -> RayTaskError:
    return RayTaskError("evaluate", "Traceback ...", error, type(error))


@pytest.mark.parametrize(
    ("error", "infra"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (MemoryError(), True),
        (ModuleNotFoundError("No module named 'mynet'"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (ValueError("my metric needs labels"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    ],
)
def test_an_exception_raised_by_the_scorer(error, infra):
    assert is_infra_error(_raised_in_a_task(error)) is infra


def test_a_lost_node_is_the_infrastructures():
    assert is_infra_error(NodeDiedError("node 1 died"))


@pytest.mark.parametrize(
    ("gpu_id", "visible", "index"),
    [
        ("3", "3", 0),  # Ray set CUDA_VISIBLE_DEVICES to the one GPU it assigned
        ("3", "1,3", 1),
        ("2", "", 2),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: every GPU visible
        ("2", None, 2),
    ],
)
def test_the_cuda_index_of_the_gpu_ray_assigned(gpu_id, visible, index):
    assert cuda_index(gpu_id, visible) == index
