"""The GPU models' relative throughput, embedded as ``data/gpu-models.json`` with its sources.

Right-sizing moves work to another GPU model only where this table has both models: their dense
FP16 Tensor Core TFLOPS and memory bandwidth (vendor datasheets; the file names each source) and
their compute capability. It is parsed once, validated like the price files (a bad entry is a
``GpuModelsError`` naming it), and carried by every ``PriceCatalog`` (``PriceCatalog.gpu_models``),
so the pure right-sizing code has the catalog as its only input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from guardian.prices.assessment import GpuModel

__all__ = ["GPU_MODELS_FILE", "GpuModelsError", "load_gpu_models", "parse_gpu_models"]

GPU_MODELS_FILE = "gpu-models.json"
_SCHEMA_VERSION = 1


class GpuModelsError(ValueError):
    """The table does not follow its schema; the message says where."""


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise GpuModelsError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def parse_gpu_models(doc: Any, where: str = GPU_MODELS_FILE) -> dict[str, GpuModel]:
    """alias (lower case) → model; raises ``GpuModelsError`` naming the bad entry."""
    if not isinstance(doc, dict) or doc.get("schema_version") != _SCHEMA_VERSION:
        raise GpuModelsError(f"{where}: schema_version must be {_SCHEMA_VERSION}")
    models = doc.get("models")
    if not isinstance(models, dict) or not models:
        raise GpuModelsError(f"{where}.models: expected a non-empty object")
    by_alias: dict[str, GpuModel] = {}
    for name, raw in models.items():
        at = f"{where}.models.{name}"
        if not isinstance(raw, dict):
            raise GpuModelsError(f"{at}: expected an object")
        aliases = raw.get("aliases")
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise GpuModelsError(f"{at}.aliases: expected a list of names")
        if not isinstance(raw.get("source"), str) or not raw["source"]:
            raise GpuModelsError(f"{at}.source: every figure needs its source")
        model = GpuModel(
            name=name,
            fp16_dense_tflops=_positive(raw.get("fp16_dense_tflops"), f"{at}.fp16_dense_tflops"),
            memory_bandwidth_gbs=_positive(
                raw.get("memory_bandwidth_gbs"), f"{at}.memory_bandwidth_gbs"
            ),
            compute_capability=_positive(raw.get("compute_capability"), f"{at}.compute_capability"),
            source=raw["source"],
        )
        for alias in [name, *aliases]:
            key = alias.lower()
            if key in by_alias and by_alias[key].name != name:
                raise GpuModelsError(f"{at}.aliases: {alias!r} also names {by_alias[key].name}")
            by_alias[key] = model
    return by_alias


@lru_cache(maxsize=1)
def load_gpu_models() -> Mapping[str, GpuModel]:
    """The embedded table, parsed once per process (package data never changes)."""
    text = resources.files("guardian.prices").joinpath("data", GPU_MODELS_FILE).read_text("utf-8")
    return parse_gpu_models(json.loads(text))
