"""Reward specs with options: ``name(spec, ..., key=value, ...)`` wrapped around any reward spec.

    ensemble(rm:runs/rm_ens, aggregate=mean_minus_std, lam=0.5)   # rewards/functions.py
    heads(rm:runs/mo_rm, weights=[1.0, 0.5])                       # rewards/functions.py
    lsc(rm:runs/rm, samples=8, quantile=0.5)                       # rewards/calibration.py
    calibrated(rm:runs/rm, samples=16, tilt=5)                     # rewards/calibration.py

Positional arguments are reward specs (themselves possibly wrapped); a keyword's value is read as YAML
(``[1.0, 0.5]`` a list, ``0.5`` a number, ``null`` None). Quote the whole spec on a shell command line
(``reward="lsc(rm:runs/rm)"``): parentheses are shell syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from alignkit.errors import ConfigError

_CALL = re.compile(r"\s*([a-z_]+)\((.*)\)\s*", re.S)
_KEY = re.compile(r"\s*([a-z_][a-z0-9_]*)\s*=(.*)", re.S)


@dataclass(frozen=True)
class Call:
    """A parsed ``name(args..., key=value...)`` spec."""

    name: str
    args: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def options(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """``defaults`` updated with this call's keywords; an unknown keyword is a ConfigError naming it."""
        unknown = sorted(set(self.kwargs) - set(defaults))
        if unknown:
            raise ConfigError(f"reward {self.name}(...): unknown option(s) {unknown}; options: {sorted(defaults)}")
        return {**defaults, **self.kwargs}

    def one_arg(self) -> str:
        if len(self.args) != 1:
            raise ConfigError(f"reward {self.name}(...) wraps one reward spec, got {len(self.args)}: {list(self.args)}")
        return self.args[0]


def split_top(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses, brackets and braces (whitespace stripped)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"reward spec {text!r}: unbalanced {ch!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise ConfigError(f"reward spec {text!r}: unbalanced brackets")
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def parse_call(spec: Any, names: tuple[str, ...]) -> Call | None:
    """The `Call` of ``spec`` when it is ``name(...)`` with ``name`` in ``names``; None for anything else."""
    m = _CALL.fullmatch(spec) if isinstance(spec, str) else None
    if m is None or m.group(1) not in names:
        return None
    args, kwargs = [], {}
    for part in split_top(m.group(2)):
        key = _KEY.fullmatch(part)
        if key is None:
            if kwargs:
                raise ConfigError(f"reward {spec!r}: a reward spec after a key=value option ({part!r})")
            args.append(part)
            continue
        try:
            kwargs[key.group(1)] = yaml.safe_load(key.group(2))
        except yaml.YAMLError as e:
            raise ConfigError(f"reward {spec!r}: option {key.group(1)} is not a value ({key.group(2).strip()!r}): "
                              f"{str(e).splitlines()[0]}") from None
    if not args:
        raise ConfigError(f"reward {spec!r}: {m.group(1)}(...) needs a reward spec inside, e.g. {m.group(1)}(rm:PATH)")
    return Call(m.group(1), tuple(args), kwargs)
