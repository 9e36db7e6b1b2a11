"""Numerical safety of an update: would the next AdamW step leave every weight and moment finite?

A step can have a finite loss and a finite gradient and still turn weights into inf or NaN (a learning
rate that overflows the weights' dtype, moments that overflow in float16): then every later step is
non-finite, and saving would write NaN checkpoints. The trainer asks `adamw_step_is_finite` before
``optimizer.step()`` and skips (counts, warns about) an update that would not be finite — the same as rolling
it back, without keeping a copy of the weights and optimizer state. The check repeats `torch.optim.AdamW`'s
arithmetic one parameter at a time (memory: one parameter's temporaries), so it costs about one more
optimizer step. Other optimizers (DeepSpeed's own, which holds no ``.grad``) are not checked.
"""

from __future__ import annotations

import math

import torch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2's DTensor: this process's shard


@torch.no_grad()
def adamw_step_is_finite(optimizer) -> bool:
    """Whether ``optimizer.step()`` (AdamW, default options) keeps every parameter and moment finite."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    if not isinstance(inner, torch.optim.AdamW):
        return True
    finite = []  # one flag per parameter, read once at the end (one device sync)
    for group in inner.param_groups:
        if group.get("amsgrad") or group.get("maximize"):
            return True
        beta1, beta2 = group["betas"]
        lr, wd, eps = float(group["lr"]), group["weight_decay"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g, w = _local(p.grad), _local(p)
            state = inner.state.get(p, {})
            step = float(state["step"]) + 1 if "step" in state else 1.0
            # the same fused ops AdamW runs (lerp, addcmul, addcdiv compute in float32 for float16 tensors: g * g
            # alone would overflow float16 for |g| > 256 where the real step does not)
            m0 = _local(state["exp_avg"]) if state else torch.zeros_like(g)
            v0 = _local(state["exp_avg_sq"]) if state else torch.zeros_like(g)
            m = torch.lerp(m0, g, 1 - beta1)
            v = torch.addcmul(v0 * beta2, g, g, value=1 - beta2)
            denom = v.sqrt() / math.sqrt(1 - beta2**step) + eps
            step_size = lr / (1 - beta1**step)
            if step_size >= torch.finfo(w.dtype).max:  # not even the step size fits the weights' dtype
                return False
            new = torch.addcdiv(w * (1 - lr * wd), m, denom, value=-step_size)
            finite.append(torch.isfinite(new).all() & torch.isfinite(v).all() & torch.isfinite(m).all())
    return bool(torch.stack(finite).all()) if finite else True
