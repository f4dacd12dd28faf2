import pytest
import torch

import pyppo


def cuda_usable() -> bool:
    return torch.cuda.is_available() and pyppo.cuda_kernels_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and pyppo built with its CUDA kernels")
    if not cuda_usable():
        for item in items:
            if item.get_closest_marker("cuda") is not None:
                item.add_marker(skip)
