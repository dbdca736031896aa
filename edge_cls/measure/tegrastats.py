"""Power, temperature and load on NVIDIA Jetson boards, read from ``tegrastats``.

``tegrastats`` prints one line per interval; its fields differ between boards and JetPack
releases (TX2/Nano ``POM_5V_IN 2070/2070``, Orin ``VDD_GPU_SOC 1596mW/1596mW``), so the parser
reads each kind of field by its shape and keeps whatever a line has. :class:`TegrastatsSampler`
runs the tool around a measurement, where it exists.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO, Any

logger = logging.getLogger(__name__)

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%")
_TEMPERATURE = re.compile(r"(?<![\w%])([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
# "RAIL current/average" in mW, with or without the unit; "2448/3956MB" (RAM, SWAP) does not match.
_POWER = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
# The rail that carries the whole module's input power, by board family, most specific first.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VIN")


@dataclass
class TegraSample:
    """One tegrastats line. Power in mW (instantaneous), temperatures in degrees C, loads in percent."""

    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    cpu_load: list[int | None] = field(default_factory=list)  # per core; None for a core that is off
    gpu_load: int | None = None
    emc_load: int | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    power_mw: dict[str, int] = field(default_factory=dict)

    @property
    def total_power_mw(self) -> int | None:
        """The module's input power where the board reports it (VDD_IN, POM_5V_IN or VIN_SYS_5V0)."""
        return next((self.power_mw[rail] for rail in TOTAL_RAILS if rail in self.power_mw), None)


def parse_tegrastats(line: str) -> TegraSample:
    """Parse one line of tegrastats output; fields a board does not print stay empty."""
    sample = TegraSample()
    if ram := _RAM.search(line):
        sample.ram_used_mb, sample.ram_total_mb = int(ram.group(1)), int(ram.group(2))
    if cpu := _CPU.search(line):
        for core in cpu.group(1).split(","):
            load = re.match(r"\s*(\d+)%", core)
            sample.cpu_load.append(int(load.group(1)) if load else None)
    if gpu := _GPU.search(line):
        sample.gpu_load = int(gpu.group(1))
    if emc := _EMC.search(line):
        sample.emc_load = int(emc.group(1))
    sample.temperatures_c = {name: float(value) for name, value in _TEMPERATURE.findall(line)}
    sample.power_mw = {rail: int(current) for rail, current, _average in _POWER.findall(line)}
    return sample


def summarize(samples: list[TegraSample]) -> dict[str, Any]:
    """Mean power per rail, peak temperature per sensor, mean GPU load, peak RAM over samples."""
    if not samples:
        return {"samples": 0}
    rails = {rail for s in samples for rail in s.power_mw}
    sensors = {name for s in samples for name in s.temperatures_c}
    totals = [s.total_power_mw for s in samples if s.total_power_mw is not None]
    gpu = [s.gpu_load for s in samples if s.gpu_load is not None]
    ram = [s.ram_used_mb for s in samples if s.ram_used_mb is not None]
    return {
        "samples": len(samples),
        "mean_power_mw": {r: _mean([s.power_mw[r] for s in samples if r in s.power_mw]) for r in sorted(rails)},
        "mean_total_power_mw": _mean(totals) if totals else None,
        "max_temperature_c": {n: max(s.temperatures_c[n] for s in samples if n in s.temperatures_c)
                              for n in sorted(sensors)},
        "mean_gpu_load_pct": _mean(gpu) if gpu else None,
        "max_ram_used_mb": max(ram) if ram else None,
    }


def _mean(values: list[int] | list[float]) -> float:
    return float(sum(values)) / len(values)


class TegrastatsSampler:
    """Runs ``tegrastats --interval N`` while the ``with`` block runs and collects its samples.

    Where tegrastats does not exist (anything but a Jetson) it collects nothing, quietly.
    """

    def __init__(self, interval_ms: int = 200, command: str = "tegrastats") -> None:
        self.interval_ms = interval_ms
        self.executable = shutil.which(command)
        self.samples: list[TegraSample] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.executable is not None

    def __enter__(self) -> TegrastatsSampler:
        if self.executable is None:
            return self
        self._process = subprocess.Popen(
            [self.executable, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True,
                                        name="edge-cls-tegrastats")
        self._reader.start()
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.strip():
                self.samples.append(parse_tegrastats(line))

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._process = None

    def summary(self) -> dict[str, Any] | None:
        """The summary of what was sampled; None where tegrastats is not available."""
        return summarize(self.samples) if self.available else None
