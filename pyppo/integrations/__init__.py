"""pyppo's gradient guard inside other training loops.

Where the guard must sit: after ``backward()``, before anything that combines gradients over
parameters. ``clip_grad_norm_`` computes one total norm over every gradient, so a single NaN
makes the norm NaN and the clip multiplies every gradient by NaN; DDP's all-reduce averages a
NaN from one rank into every rank. Three ways in:

* A hand-written loop (CleanRL style): call :meth:`pyppo.GradientGuard.step` instead of
  ``clip_grad_norm_`` (it zeroes NaN/inf, then clips)::

      guard = GradientGuard(model, max_norm=0.5)
      optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
      for update in range(num_updates):
          batch = collect_rollout(model, env)
          for epoch in range(update_epochs):
              for mb in batch.minibatches(minibatch_size):
                  loss = compute_loss(model, mb)
                  optimizer.zero_grad()
                  loss.backward()
                  guard.step()  # replaces nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                  optimizer.step()
          guard.log_events()  # one host sync per update

* A loop that only calls ``optimizer.step()`` and does not clip:
  :meth:`pyppo.GradientGuard.attach` runs the guard before every ``optimizer.step()``.
* A trainer that clips by itself (Stable-Baselines3, ...): :func:`guard_after_backward` runs
  the guard at the end of every backward pass, before the trainer's clip;
  :mod:`pyppo.integrations.sb3` does that for SB3's PPO (it imports stable_baselines3, this
  package does not).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.autograd import Variable
from torch.utils.hooks import RemovableHandle

from pyppo.guard import GradientGuard

__all__ = ["BackwardGuardHandle", "guard_after_backward"]


class BackwardGuardHandle:
    """The hooks :func:`guard_after_backward` installed; :meth:`remove` detaches them."""

    def __init__(self, handles: list[RemovableHandle]) -> None:
        """:param handles: the gradient hooks' handles, one per parameter."""
        self.handles = handles

    def remove(self) -> None:
        """Remove every hook (the guard no longer runs after backward)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


def guard_after_backward(guard: GradientGuard, module: nn.Module) -> BackwardGuardHandle:
    """Run ``guard.step()`` once at the end of every backward pass that accumulates a
    gradient into one of ``module``'s parameters, i.e. after all of that pass's ``.grad`` are
    written and before any code after ``backward()`` (a trainer's ``clip_grad_norm_``) runs.

    Every parameter that requires a gradient gets a hook
    (``Tensor.register_post_accumulate_grad_hook``, run after its ``.grad`` is accumulated);
    each hook queues a callback on the autograd engine (the one DDP uses to finish its
    all-reduce), and the engine runs the queued callbacks when the whole backward pass is
    done. The first callback of a pass runs the guard, the others find nothing pending. So
    the guard sees every gradient of the pass, however many parameters it reached, and runs
    once per backward (twice with gradient accumulation over two backward passes, which
    is harmless: the second run guards the sum).

    :param guard: the guard to run; build it on ``module`` (or on a module that holds the
        same parameters), usually with ``max_norm=float("inf")`` when the trainer clips.
    :param module: the module whose parameters' gradients trigger the guard.
    :return: a handle whose ``remove()`` detaches the hooks.
    """
    pending = False

    def run_guard() -> None:
        nonlocal pending
        if pending:
            pending = False
            guard.step()

    def on_grad_accumulated(param: Tensor) -> None:
        nonlocal pending
        pending = True
        # One callback per hook rather than one per pass: if a backward pass fails, its
        # callbacks are dropped with it, and the next pass still queues its own.
        Variable._execution_engine.queue_callback(run_guard)

    return BackwardGuardHandle(
        [
            param.register_post_accumulate_grad_hook(on_grad_accumulated)
            for param in module.parameters()
            if param.requires_grad
        ]
    )
