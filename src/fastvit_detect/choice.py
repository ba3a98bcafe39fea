"""Which variant ``variant="auto"`` runs: the fastest one this machine can run that passed the exporter's gate.

A package may hold variants for two runtimes: onnxruntime's (``int8``, ``fp32``) and OpenVINO's
(``openvino-int8``, an NNCF int8 graph). ``auto`` first takes the onnxruntime variant the package recommends (int8
when present, falling back from one this CPU can't run), then weighs the OpenVINO variant against it:

1. not in the package, or OpenVINO not installed: the onnxruntime variant (a warning in the second case, since a
   faster variant is left unused);
2. a calibration cached for this machine, package and runtimes (``fastvit-detect info PKG --calibrate`` times both
   variants' best layouts): the faster of the two;
3. else the rule: OpenVINO where the CPU has int8 dot-product instructions (VNNI, AMX), the classes on which its
   int8 was measured faster than onnxruntime's; onnxruntime elsewhere, where it hasn't been measured.

The choice and its reason are shown by ``info``, ``/healthz``, ``/api/v1/model`` and ``repr(detector)``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import ONNXRUNTIME, OPENVINO, RUNTIMES
from .errors import IncompatibleModelError
from .layout import cache_directory, read_cache_record, write_cache_record
from .package import AUTO_PREFERENCE, ModelPackage, Variant
from .session import cpu_flags

# CPU flags of the classes where OpenVINO's int8 beat onnxruntime's int8 on ViT-B/16 (docs/performance.md): AMX
# Xeon (0.68x our throughput), Zen 4 with AVX-512 VNNI (0.77x). AVX2-only CPUs haven't been measured: onnxruntime.
OPENVINO_FASTER_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class VariantChoice:
    """The variant to run, how it was chosen (``caller``, ``recommended``, ``calibrated``, ``rule``,
    ``fallback``) and why, in words; ``fallback``: the variant to run instead if this one can't be opened
    (``auto`` only)."""

    name: str
    source: str
    reason: str
    fallback: str | None = None

    def describe(self) -> str:
        return f"{self.name} ({self.source}: {self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.name, "source": self.source, "reason": self.reason}


def unmet_cpu_requirement(variant: Variant) -> str | None:
    """Why this CPU can't run ``variant`` safely, or None. A graph quantized with full 8-bit weights needs VNNI:
    without it onnxruntime's u8 x s8 kernels sum pairs of products in int16, which those weights can saturate.
    Where the flags can't be read (not Linux) the variant is trusted."""
    required = variant.entry.required_cpu_flags if variant.entry else ()
    flags = cpu_flags()  # the manifest's list was validated when the package was opened
    if not required or not flags or any(flag in flags for flag in required):
        return None
    return f"variant {variant.name!r} needs a CPU with {' or '.join(required)}, and this one has neither"


def openvino_variant(package: ModelPackage) -> Variant | None:
    """The package's OpenVINO variant (``openvino-int8`` by the exporter's name), if any."""
    return next((variant for variant in package.variants.values() if variant.runtime == OPENVINO), None)


def openvino_rule(flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether the rule prefers OpenVINO on a CPU with ``flags`` (default: this one's), and why."""
    flags = cpu_flags() if flags is None else flags
    present = [flag for flag in OPENVINO_FASTER_FLAGS if flag in flags]
    if present:
        return True, (f"this CPU has {present[0]}, a class on which OpenVINO's int8 measured faster than "
                      "onnxruntime's; `fastvit-detect info PKG --calibrate` measures this machine")
    return False, ("this CPU has no int8 dot-product instructions (VNNI/AMX), a class on which OpenVINO hasn't been "
                   "measured faster; `fastvit-detect info PKG --calibrate` measures this machine")


def choice_cache_path(base: Variant, candidate: Variant, runtime_version: str,
                      directory: Path | None = None) -> Path:
    """Where the calibrated choice between two variants is cached: per machine (in the record), graphs and
    OpenVINO version."""
    key = f"{base.sha256}:{candidate.sha256}:{runtime_version}"
    return (directory or cache_directory()) / f"choice-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def read_choice(path: Path, names: tuple[str, str]) -> tuple[str, dict[str, float]] | None:
    """The cached winner among ``names`` and its figures, or None when there is no usable record."""
    record = read_cache_record(path)
    if record is None:
        return None
    winner, figures = record.get("winner"), record.get("images_per_s")
    if winner not in names or not isinstance(figures, dict):
        return None
    return winner, {str(key): value for key, value in figures.items() if isinstance(value, (int, float))}


def write_choice(path: Path, figures: dict[str, float]) -> str:
    """Cache the variant with the most images per second in ``figures`` (variant -> images/s); returns it."""
    winner = max(figures, key=lambda name: figures[name])
    write_cache_record(path, {"winner": winner, "images_per_s": {k: round(v, 3) for k, v in figures.items()}})
    return winner


def onnxruntime_choice(package: ModelPackage, variant: str = "auto") -> VariantChoice:
    """The onnxruntime variant ``auto`` starts from (the package's recommendation, else int8, else fp32, falling
    back from one this CPU can't run), or the variant named."""
    if variant != "auto":
        chosen = package.lookup(variant)
        problem = unmet_cpu_requirement(chosen)
        if problem:
            raise IncompatibleModelError(f"model package {package.root}: {problem}; load another variant (fp32) "
                                         "or re-export without --cpu-specific / --no-reduce-range")
        return VariantChoice(chosen.name, "caller", "named by the caller")
    candidates = {name: chosen for name, chosen in package.variants.items() if chosen.runtime == ONNXRUNTIME}
    recommended = package.default_variant  # the manifest's recommendation, else int8, else fp32
    order = [name for name in (recommended, *AUTO_PREFERENCE, *candidates) if name in candidates]
    if not order:  # only variants of other runtimes: the first the package lists
        first = next(iter(package.variants))
        return VariantChoice(first, "recommended", "the package holds no onnxruntime variant")
    first = order[0]
    problem = unmet_cpu_requirement(candidates[first])
    if problem is None:
        return VariantChoice(first, "recommended", "the package's default onnxruntime variant")
    fallback = next((name for name in order if not unmet_cpu_requirement(candidates[name])), None)
    if fallback is None:
        raise IncompatibleModelError(f"model package {package.root}: {problem}, and no other variant runs here")
    warnings.warn(f"model package {package.root}: {problem}; using variant {fallback!r} instead",
                  RuntimeWarning, stacklevel=4)
    return VariantChoice(fallback, "fallback", problem)


def choose_variant(package: ModelPackage, variant: str = "auto") -> VariantChoice:
    """The variant :meth:`Detector.load` runs for ``variant``: the one named, or ``auto``'s choice (module
    docstring). Its files needn't be there yet: :meth:`Detector.from_pretrained` chooses before it downloads."""
    if not isinstance(variant, str):
        package.lookup(variant)  # raises the typed error naming the bad value
    if variant != "auto":
        chosen = package.lookup(variant)
        if chosen.runtime not in RUNTIMES:
            from .errors import BackendError

            raise BackendError(f"model package {package.root}: variant {chosen.name!r} runs on {chosen.runtime!r}, "
                               f"which this fastvit-detect doesn't know ({', '.join(RUNTIMES)}); upgrade it or "
                               "load another variant")
        if chosen.runtime == OPENVINO:
            return VariantChoice(chosen.name, "caller", "named by the caller")
        return onnxruntime_choice(package, variant)
    base = onnxruntime_choice(package, "auto")
    candidate = openvino_variant(package)
    if candidate is None or base.name == candidate.name:
        return base
    from .openvino_session import openvino_available, openvino_version

    missing = openvino_available()
    if missing is not None:
        warnings.warn(f"model package {package.root} has an OpenVINO variant ({candidate.name!r}), usually faster "
                      f"on CPUs, but {missing}; running {base.name!r} on onnxruntime", RuntimeWarning, stacklevel=3)
        return VariantChoice(base.name, base.source, f"{base.reason}; OpenVINO isn't installed")
    calibrated = read_choice(choice_cache_path(package.variants[base.name], candidate, openvino_version()),
                             (base.name, candidate.name))
    if calibrated is not None:
        winner, figures = calibrated
        shown = ", ".join(f"{name} {value:.1f} img/s" for name, value in figures.items())
        fallback = base.name if winner == candidate.name else None
        return VariantChoice(winner, "calibrated", f"measured on this machine: {shown}", fallback)
    prefer, why = openvino_rule()
    if prefer:
        return VariantChoice(candidate.name, "rule", why, fallback=base.name)
    return VariantChoice(base.name, "rule", why)
