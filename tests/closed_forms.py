"""Plain-`math` closed forms and float64 tensors shared by the objective tests."""

import math

import torch

D = torch.float64


def lsig(x):  # log sigma(x), stable, plain math
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return math.exp(lsig(x))


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def T(x, **kw):
    return None if x is None else torch.tensor(x, dtype=D, **kw)
