"""Which machine a figure was measured on: CPU model, the instruction sets that decide which
precision is fastest, core count, OS, and the board's name on a Jetson. Beside every figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The instruction sets that decide which precision is fastest here (INT8 dot products, bf16, AMX).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimddp", "bf16")


def machine_description() -> str:
    """The CPU model, its speed-relevant instruction sets, core count, OS and Python: beside every figure."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = value.strip()
            elif key in ("flags", "Features") and not flags:  # x86 / ARM (Jetson)
                present = set(value.split())
                flags = [f for f in SPEED_FLAGS if f in present]
    except OSError:
        pass
    if flags:
        x86_without_amx = "avx2" in flags and not any(f.startswith("amx") for f in flags)
        cpu += f" ({' '.join(flags)}{'; no AMX' if x86_without_amx else ''})"
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {system}, Python {platform.python_version()}"


def device_model() -> str | None:
    """The board's name where the firmware gives one (a Jetson: "NVIDIA Jetson Orin Nano ...")."""
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ") or None
    except OSError:
        return None


def machine_record() -> dict[str, str]:
    """What an artifact chosen on this machine records about it: CPU model and speed-relevant
    instruction sets, cores, OS, Python, and the board where the firmware names one."""
    record = {"description": machine_description(), "machine": platform.machine(),
              "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
              "logical_cpus": str(os.cpu_count())}
    board = device_model()
    if board:
        record["board"] = board
    return record
