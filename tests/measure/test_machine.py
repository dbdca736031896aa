"""The machine description beside every figure."""

def test_machine_description_names_the_instruction_sets_that_decide_precision_speed():
    from pathlib import Path

    from edge_cls.measure.machine import SPEED_FLAGS, machine_description

    text = machine_description()
    assert "logical CPUs" in text and "Python" in text
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        present = {f for line in cpuinfo.read_text().splitlines() if line.startswith(("flags", "Features"))
                   for f in line.partition(":")[2].split()}
        shown = [f for f in SPEED_FLAGS if f in present]
        if shown:
            assert f"({' '.join(shown)}" in text
