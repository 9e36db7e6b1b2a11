"""Inference-time alignment: better outputs from a fixed model (best-of-N family, guided decoding, search,
nudging, URIAL, grammar-aligned sampling). See `alignkit.inference.base` for the method contract.

The method modules register themselves on first use (`get_method` / `run_method` / `METHODS` via
`builtin_methods`), so importing this package (e.g. for ``alignkit --help``) does not load torch."""

from alignkit.inference.base import (
    BUILTIN_MODULES,
    METHODS,
    InferenceOutput,
    InferenceSettings,
    builtin_methods,
    get_method,
    method_options,
    register,
    run_method,
)

__all__ = ["BUILTIN_MODULES", "METHODS", "InferenceOutput", "InferenceSettings", "builtin_methods", "get_method",
           "method_options", "register", "run_method"]
