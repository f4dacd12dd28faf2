"""Counting the places where a computation waits for the device: reads of tensor values
back to the host (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``, ``.numpy()``, and the
dispatcher ops behind them), and the ops it dispatches (on a GPU, the kernel launches). On a
GPU each one stalls the CPU until the queued kernels have run, so a training loop that wants
to keep a GPU busy reads as few as it can;
``torch.cuda.set_sync_debug_mode`` finds them on a GPU, :class:`HostReads` anywhere."""

from __future__ import annotations

from types import TracebackType

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Dispatcher ops that copy a value to the host: a scalar read, and nonzero (its output size).
READ_OPS = frozenset({torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default})
# Tensor methods that read values to the host at the Python level.
READ_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


class _DispatchReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops += 1
        if func in READ_OPS:
            self.reads += 1
        return func(*args, **(kwargs or {}))


class HostReads:
    """Counts host reads while active, at two levels: ``python`` (calls of the Tensor
    methods in :data:`READ_METHODS`) and ``dispatch`` (the ops in :data:`READ_OPS`, which
    also catch reads made inside torch and C++ code). Not thread-safe; it slows every op.

    ::

        with HostReads() as reads:
            trainer.train(total_steps=...)
        print(reads.python, reads.dispatch)
    """

    def __init__(self) -> None:
        self.python = 0
        self.dispatch = 0
        self.ops = 0  # every op dispatched meanwhile (each a kernel launch on a GPU)
        self._mode = _DispatchReads()
        self._originals: dict[str, object] = {}

    def __enter__(self) -> HostReads:
        self._originals = {name: getattr(torch.Tensor, name) for name in READ_METHODS}
        for name, method in self._originals.items():
            setattr(torch.Tensor, name, self._counting(method))
        self._mode.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._mode.__exit__(kind, error, trace)
        for name, method in self._originals.items():
            setattr(torch.Tensor, name, method)
        self.dispatch = self._mode.reads
        self.ops = self._mode.ops

    def _counting(self, method):  # noqa: ANN001, ANN202
        def call(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
            self.python += 1
            return method(tensor, *args, **kwargs)

        return call
