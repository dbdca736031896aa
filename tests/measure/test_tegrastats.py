"""tegrastats lines as Jetson boards print them (recorded from NVIDIA's documentation and boards),
and the sampler around a real tegrastats-like process."""

from __future__ import annotations

import os
import stat

import pytest

from edge_cls.measure.tegrastats import TegrastatsSampler, parse_tegrastats, summarize

NANO = ("RAM 2448/3956MB (lfb 127x4MB) SWAP 0/1978MB (cached 0MB) CPU [8%@1479,3%@1479,2%@1479,1%@1479] "
        "EMC_FREQ 0% GR3D_FREQ 0% PLL@25.5C CPU@28C PMIC@100C GPU@26C AO@33.5C thermal@27.25C "
        "POM_5V_IN 2070/2070 POM_5V_GPU 0/0 POM_5V_CPU 328/328")
ORIN = ("RAM 3175/30536MB (lfb 6127x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,1%@729,off,off] "
        "EMC_FREQ 0%@2133 GR3D_FREQ 12%@[305,305] cpu@46.5C soc2@43.843C soc0@44.375C gpu@43.531C tj@46.5C "
        "soc1@43.5C VDD_GPU_SOC 1596mW/1596mW VDD_CPU_CV 399mW/399mW VIN_SYS_5V0 2712mW/2712mW")
ORIN_NANO_JP6 = ("11-29-2025 13:02:11 RAM 1900/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
                 "CPU [3%@1510,2%@1510,0%@1510,1%@1510,off,off] GR3D_FREQ 0% cpu@47.2C soc2@45.1C soc0@46.3C "
                 "gpu@45.9C tj@47.2C soc1@45.5C VDD_IN 4733mW/4720mW VDD_CPU_GPU_CV 560mW/552mW VDD_SOC 1440mW/1436mW")
XAVIER = ("RAM 1234/15692MB (lfb 3143x4MB) SWAP 0/7846MB (cached 0MB) CPU [1%@1190,off,off,off,2%@1190,0%@1190,"
          "off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@1377 APE 150 MTS fg 0% bg 0% AO@36C GPU@36.5C Tdiode@39.25C "
          "PMIC@100C AUX@35.5C CPU@37.5C thermal@36.6C Tboard@36C GPU 0/0 CPU 311/311 SOC 1243/1243 CV 0/0 "
          "VDDRQ 155/155 SYS5V 1732/1732")


def test_nano_line():
    s = parse_tegrastats(NANO)
    assert (s.ram_used_mb, s.ram_total_mb, s.cpu_load, s.gpu_load, s.emc_load) == (2448, 3956, [8, 3, 2, 1], 0, 0)
    assert s.temperatures_c == {"PLL": 25.5, "CPU": 28.0, "PMIC": 100.0, "GPU": 26.0, "AO": 33.5, "thermal": 27.25}
    assert s.power_mw == {"POM_5V_IN": 2070, "POM_5V_GPU": 0, "POM_5V_CPU": 328}
    assert s.total_power_mw == 2070


def test_orin_line():
    s = parse_tegrastats(ORIN)
    assert s.cpu_load == [0, 1, None, None] and s.gpu_load == 12 and s.ram_used_mb == 3175
    assert s.temperatures_c["gpu"] == 43.531 and s.temperatures_c["tj"] == 46.5 and len(s.temperatures_c) == 6
    assert s.power_mw == {"VDD_GPU_SOC": 1596, "VDD_CPU_CV": 399, "VIN_SYS_5V0": 2712}
    assert s.total_power_mw == 2712


def test_orin_nano_jetpack6_line_with_a_timestamp():
    s = parse_tegrastats(ORIN_NANO_JP6)
    assert s.total_power_mw == 4733 and s.power_mw["VDD_SOC"] == 1440
    assert s.cpu_load == [3, 2, 0, 1, None, None] and "tj" in s.temperatures_c


def test_xavier_line_rails_without_units():
    s = parse_tegrastats(XAVIER)
    assert s.power_mw == {"GPU": 0, "CPU": 311, "SOC": 1243, "CV": 0, "VDDRQ": 155, "SYS5V": 1732}
    assert s.total_power_mw is None  # Xavier AGX reports no module input rail
    assert s.temperatures_c["Tdiode"] == 39.25 and s.cpu_load.count(None) == 5


def test_summary_over_samples():
    summary = summarize([parse_tegrastats(NANO), parse_tegrastats(NANO.replace("POM_5V_IN 2070", "POM_5V_IN 3070"))])
    assert summary["samples"] == 2 and summary["mean_total_power_mw"] == 2570
    assert summary["max_temperature_c"]["PMIC"] == 100.0 and summary["max_ram_used_mb"] == 2448
    assert summarize([]) == {"samples": 0}


def test_sampler_without_tegrastats_collects_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with TegrastatsSampler() as sampler:
        pass
    assert not sampler.available and sampler.summary() is None


def test_sampler_runs_and_stops_the_tool(monkeypatch, tmp_path):
    """A stand-in for the board's tool (a real process printing recorded lines until terminated)."""
    script = tmp_path / "tegrastats"
    script.write_text(f'#!/bin/sh\nwhile true; do echo "{ORIN}"; sleep 0.05; done\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with TegrastatsSampler(interval_ms=50) as sampler:
        import time

        time.sleep(0.6)
    summary = sampler.summary()
    assert summary["samples"] >= 3 and summary["mean_total_power_mw"] == pytest.approx(2712)
    assert sampler._process is None  # terminated and reaped
