"""Arithmetic per image (from the model config) and this CPU's theoretical peak (from its instruction set).

Achieved GFLOP/s = 2 x MACs per image x images per second; efficiency = achieved / peak. The peak is an upper
bound under stated assumptions, not a promise: AVX-512 code often runs below the nominal clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastvit_detect.session import has_vnni

from .machine import clock_mhz, cpu_flags, physical_cores


def vit_macs(config: Mapping[str, Any]) -> dict[str, Any]:
    """Multiply-accumulates per image of a ViT/DeiT classifier, counting the matrix products only.

    Per encoder layer with T tokens, width d and MLP width m: Q, K, V and output projections 4*T*d^2, attention
    scores and the weighted sum 2*T^2*d, MLP 2*T*d*m. Plus the patch embedding (a 16x16 stride-16 convolution,
    i.e. one matmul per patch) and the classifier head(s). LayerNorm, softmax and GELU are O(T*d): ignored.
    """
    image = int(config.get("image_size", 224))
    patch = int(config.get("patch_size", 16))
    channels = int(config.get("num_channels", 3))
    d = int(config["hidden_size"])
    m = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    labels = len(config.get("id2label") or {0: 0, 1: 1})
    patches = (image // patch) ** 2
    deit = config.get("model_type") == "deit"
    tokens = patches + 1 + (1 if deit else 0)  # CLS (+ DeiT's distillation token)
    embedding = patches * channels * patch * patch * d
    per_layer = 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * m
    head = d * labels * (2 if deit and "DeiTForImageClassificationWithTeacher" in (config.get("architectures") or [])
                         else 1)
    total = embedding + layers * per_layer + head
    linear = embedding + layers * (4 * tokens * d * d + 2 * tokens * d * m) + head
    return {"macs": total, "gmacs": total / 1e9, "linear_share": linear / total, "tokens": tokens}


# The int8 yardstick the project's targets are written against: AVX2 u8 x s8 dot products without VNNI.
# Each 32 u8*s8 MACs take VPMADDUBSW and VPMADDWD, both multiplies, which x86 cores issue on two vector ports
# (VPADDD goes to a third): at best 32 MACs = 64 int8 OP per cycle per core. An upper bound, as a peak must be.
AVX2_U8S8_OPS_PER_CYCLE = 64


def cpu_peak() -> dict[str, Any]:
    """Theoretical fp32 FLOP/s and int8 OP/s of the cores this process may use.

    Two int8 peaks: the widest instruction set present (what onnxruntime's kernels pick at run time), and the
    AVX2-without-VNNI yardstick. On a VNNI machine an int8 kernel can exceed the latter; that only shows the
    yardstick doesn't describe the machine, so the report gives both.
    """
    flags = cpu_flags()
    cores = physical_cores()
    mhz, clock_source = clock_mhz()
    assumptions = [f"{cores} physical core(s) (SMT siblings share one core's vector units)",
                   f"clock {mhz} MHz ({clock_source}); sustained AVX-512 clocks may be lower"]
    if "avx512f" in flags:
        lanes, units = 16, 2
        assumptions.append("AVX-512: 16 fp32 lanes; 2 FMA units per core (Xeon Scalable Gold/Platinum; "
                           "1 on some Silver/Bronze parts, halving the peak)")
    elif "avx2" in flags and "fma" in flags:
        lanes, units = 8, 2
        assumptions.append("AVX2+FMA: 8 fp32 lanes, 2 FMA units per core")
    else:
        lanes, units = 4, 1
        assumptions.append("no AVX2/FMA found: SSE, 4 fp32 lanes, 1 unit (a rough guess)")
    fp32_per_cycle = lanes * units * 2  # FMA = 2 FLOPs per lane
    if has_vnni(flags):
        # VPDPBUSD: 4 u8*s8 MACs per 32-bit lane in one instruction, i.e. 4x the fp32 MAC rate.
        int8_per_cycle = fp32_per_cycle * 4
        assumptions.append("VNNI: int8 dot products (VPDPBUSD) at 4x the fp32 MAC rate")
    else:
        # Without VNNI: VPMADDUBSW + VPMADDWD + VPADDD, 3 instructions for 4 MACs per lane: ~4/3x fp32.
        int8_per_cycle = fp32_per_cycle * 4 // 3
        assumptions.append("no VNNI: int8 via VPMADDUBSW/VPMADDWD/VPADDD, ~4/3x the fp32 MAC rate")
    assumptions.append(f"AVX2 u8xs8 yardstick: VPMADDUBSW+VPMADDWD on 2 ports, {AVX2_U8S8_OPS_PER_CYCLE} int8 "
                       "OP/cycle/core whatever the machine has")
    if "amx_int8" in flags:
        assumptions.append("AMX present but not counted (onnxruntime's dynamic int8 kernels don't use it)")
    if "avx512_bf16" in flags:
        # VDPBF16PS: two bf16 products per fp32 lane, accumulated in fp32.
        bf16_per_cycle = fp32_per_cycle * 2
        assumptions.append("AVX512-BF16: bf16 dot products (VDPBF16PS) at 2x the fp32 FLOP rate"
                           + ("; AMX-BF16 present but not counted" if "amx_bf16" in flags else ""))
    else:
        bf16_per_cycle = fp32_per_cycle
        assumptions.append("no AVX512-BF16: bf16 counted at the fp32 rate" + (
            " (AMX-BF16 present but not counted)" if "amx_bf16" in flags else ""))
    if mhz is None:
        return {"fp32_gflops": None, "bf16_gflops": None, "int8_gops": None, "int8_gops_avx2": None,
                "assumptions": [*assumptions, "clock unknown: no peak"]}
    ghz = mhz / 1000
    return {
        "fp32_gflops": cores * ghz * fp32_per_cycle,
        "bf16_gflops": cores * ghz * bf16_per_cycle,
        "int8_gops": cores * ghz * int8_per_cycle,
        "int8_gops_avx2": cores * ghz * AVX2_U8S8_OPS_PER_CYCLE,
        "fp32_flops_per_cycle_per_core": fp32_per_cycle,
        "int8_ops_per_cycle_per_core": int8_per_cycle,
        "clock_mhz": mhz,
        "assumptions": assumptions,
    }
