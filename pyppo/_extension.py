"""Loads pyppo._C and turns the ways that can fail into errors that say what to do."""

from __future__ import annotations

import importlib

import torch

_REBUILD = "rebuild it with: pip install --no-build-isolation -e .  (from the pyppo checkout)"


def _base_version(version: str) -> str:
    return version.split("+")[0]


def _load():
    try:
        build_info = importlib.import_module("pyppo._build_info")
    except ImportError:
        build_info = None
    try:
        ext = importlib.import_module("pyppo._C")
    except ImportError as err:
        if build_info is None:
            raise ImportError(
                f"pyppo's compiled extension (pyppo._C) is missing: {_REBUILD}"
            ) from err
        raise ImportError(
            f"pyppo's extension failed to load ({err}). It was built against torch "
            f"{build_info.TORCH_VERSION}; torch {torch.__version__} is installed. {_REBUILD}"
        ) from err
    built_for = ext.torch_version
    if _base_version(built_for) != _base_version(torch.__version__):
        raise ImportError(
            f"pyppo's extension was built against torch {built_for}, but torch "
            f"{torch.__version__} is installed; {_REBUILD}"
        )
    return ext


_C = _load()


def cuda_kernels_available() -> bool:
    """True when pyppo was built with its CUDA kernels (a GPU may still be absent)."""
    return bool(_C.cuda_kernels_built())
