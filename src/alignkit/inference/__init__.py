"""Inference-time alignment: better outputs from a fixed model (best-of-N family, guided decoding, search,
nudging, URIAL, grammar-aligned sampling). See `alignkit.inference.base` for the method contract."""

from alignkit.inference.base import (METHODS, InferenceOutput, InferenceSettings, get_method, method_options,
                                     register, run_method)

__all__ = ["METHODS", "InferenceOutput", "InferenceSettings", "get_method", "method_options", "register", "run_method"]
