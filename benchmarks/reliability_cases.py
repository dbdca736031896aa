"""Hostile inputs for benchmarks/reliability.py: image files, tampered artifacts, fuzzed manifests.

Each case becomes a :class:`Case` with its outcome. The CLI runs as a real subprocess under an
address-space limit and a time limit, and its peak RSS is read from ``wait4``.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edge_cls.errors import EdgeClsError

CLI = [sys.executable, "-m", "edge_cls"]  # for runs that need no peak RSS
MEMORY_LIMIT = 6 << 30  # address space of each CLI subprocess: a runaway allocation fails, not the machine
KEY = "reliability-report-key-0123456789"


@dataclass
class Case:
    """One hostile input or fault, and what came of it."""

    kind: str  # the input class
    name: str
    status: str  # "accepted" | "clean error" | "crash"
    seconds: float = 0.0
    detail: str = ""
    traceback: bool = False
    lost: bool = False
    rss_mb: float | None = None


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    rss_mb: float
    timed_out: bool


# `python -m edge_cls ARGS`, reporting its peak RSS (VmHWM) on exit. wait4's ru_maxrss would not do: a
# child forked from this process (torch loaded) counts this process's pages until it execs.
_LAUNCHER = """
import atexit, os, runpy, sys
def report():
    with open('/proc/self/status') as status, open(os.environ['RELIABILITY_RSS_FILE'], 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM:')))
atexit.register(report)
sys.argv = ['edge-cls', *sys.argv[1:]]
runpy.run_module('edge_cls', run_name='__main__', alter_sys=True)
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None) -> CliRun:
    """``edge-cls ARGS`` in a subprocess under a memory and a time limit, with its peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as rss:
        started = time.perf_counter()
        environment = {**os.environ, "EDGE_CLS_PROGRESS": "off", "RELIABILITY_RSS_FILE": rss.name, **(env or {})}
        process = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *args], stdout=out, stderr=err,
                                   preexec_fn=_limit_memory, env=environment)
        try:
            process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            timed_out = True
        out.seek(0)
        err.seek(0)
        reported = Path(rss.name).read_text().strip()
        return CliRun(process.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      time.perf_counter() - started, int(reported) / 1024 if reported else float("nan"), timed_out)


def classify(kind: str, name: str, run: CliRun) -> Case:
    """A CLI run's outcome: exit 0 accepted; one ``edge-cls: error:`` line and exit 1 a clean error;
    anything else (internal error, out of memory, a signal, a hang) a crash."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    case = Case(kind, name, "crash", run.seconds, last[:300], "Traceback" in run.stderr, rss_mb=run.rss_mb)
    if run.timed_out:
        case.detail = f"hang: killed after {run.seconds:.0f}s"
    elif run.returncode == 0:
        case.status, case.detail = "accepted", ""
    elif run.returncode == 1 and last.startswith("edge-cls: error:") and "out of memory" not in last:
        case.status = "clean error"
    elif run.returncode < 0:
        case.detail = f"killed by signal {-run.returncode} (peak RSS {run.rss_mb:.0f} MB)"
    return case


def attempt(kind: str, name: str, work: Callable[[], object]) -> Case:
    """An in-process call's outcome: returned, an EdgeClsError, or any other exception (a crash)."""
    started = time.perf_counter()
    try:
        work()
        status, detail = "accepted", ""
    except EdgeClsError as e:
        status, detail = "clean error", str(e)[:300]
    except Exception as e:  # the point: anything that is not ours is a crash
        status, detail = "crash", f"{type(e).__name__}: {str(e)[:300]}"
    return Case(kind, name, status, time.perf_counter() - started, detail)


# ---------------------------------------------------------------- malformed images and hostile sizes


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(
        b"IEND", b"")


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A baseline JPEG with its frame header (SOF0) rewritten to claim another size."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def bmp_claiming(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 16


def _flipped(data: bytes, rng: random.Random, flips: int, skip: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        out[rng.randrange(skip, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def photo(size: tuple[int, int]) -> Image.Image:
    """A real photo (scikit-image's cat), resized."""
    from skimage import data

    return Image.fromarray(data.chelsea()).resize(size, Image.Resampling.BICUBIC)


def image_files(root: Path, seed: int) -> dict[str, Path]:
    """The corpus: name -> file (or a path that is not a regular file)."""
    rng = random.Random(seed)
    cat = photo((640, 480))
    jpeg, png = _encode(cat, "JPEG", quality=90), _encode(cat, "PNG")
    files: dict[str, bytes] = {"valid JPEG 640x480.jpg": jpeg, "valid PNG 640x480.png": png}
    for fraction in (0.0, 0.01, 0.1, 0.5, 0.9):
        files[f"JPEG truncated at {fraction:.0%}.jpg"] = jpeg[:int(len(jpeg) * fraction)]
        files[f"PNG truncated at {fraction:.0%}.png"] = png[:int(len(png) * fraction)]
    files["JPEG minus its last byte.jpg"], files["PNG minus its last byte.png"] = jpeg[:-1], png[:-1]
    for i in range(4):
        files[f"JPEG with 10 bit flips #{i}.jpg"] = _flipped(jpeg, rng, 10, 20)
        files[f"PNG with 10 bit flips #{i}.png"] = _flipped(png, rng, 10, 8)
    for size in (0, 1, 64, 4096, 1 << 20):
        files[f"{size} random bytes.jpg"] = rng.randbytes(size)
    files.update({
        "text named .jpg.jpg": b"hello, I am not an image\n", "HTML named .png.png": b"<html><body>x</body></html>",
        "ZIP named .png.png": _zip_bytes(), "PNG signature only.png": b"\x89PNG\r\n\x1a\n",
        "PNG 20000x1 (real).png": _encode(Image.new("L", (20000, 1), 128), "PNG"),
        "PNG 1x20000 (real).png": _encode(Image.new("L", (1, 20000), 128), "PNG"),
        "PNG header 12000x12000 (144 MP, under the bomb limit).png": png_header(12000, 12000),
        "PNG header 30000x30000 (900 MP).png": png_header(30000, 30000),
        "PNG header 100000x100000.png": png_header(100_000, 100_000),
        "JPEG header 65000x65000.jpg": jpeg_claiming(jpeg, 65000, 65000),
        "BMP header 50000x50000.bmp": bmp_claiming(50000, 50000),
        **_odd_modes(cat),
    })
    paths = {}
    for name, data in files.items():
        path = root / name.replace("/", "_")
        path.write_bytes(data)
        paths[name] = path
    return {**paths, **_not_regular_files(root, png)}


def _zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "a" * 1000)
    return buffer.getvalue()


def _odd_modes(cat: Image.Image) -> dict[str, bytes]:
    small = cat.resize((64, 48))
    frames = [small, small.rotate(90)]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    return {
        "animated GIF.gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "multi-page TIFF.tiff": _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "16-bit grey PNG.png": _encode(Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 20).reshape(48, 64)),
                                      "PNG"),
        "CMYK JPEG.jpg": _encode(small.convert("CMYK"), "JPEG"),
        "palette PNG with transparency.png": _encode(small.convert("P"), "PNG", transparency=0),
        "grey+alpha PNG.png": _encode(small.convert("LA"), "PNG"),
        "1-bit PNG.png": _encode(small.convert("1"), "PNG"),
        "float TIFF.tiff": _encode(small.convert("F"), "TIFF"),
        "WebP.webp": _encode(small, "WEBP"),
        "EXIF-rotated JPEG.jpg": _encode(small, "JPEG", exif=exif),
        "1x1 PNG.png": _encode(Image.new("RGB", (1, 1)), "PNG"),
    }


def _not_regular_files(root: Path, png: bytes) -> dict[str, Path]:
    (root / "a directory.png").mkdir()
    os.mkfifo(root / "a FIFO.png")
    (root / "link to dev zero.png").symlink_to("/dev/zero")
    (root / "link loop.png").symlink_to(root / "link loop.png")
    odd_name = root / os.fsdecode(b"not UTF-8 \xff\xfe.png")
    odd_name.write_bytes(png)
    return {"a directory": root / "a directory.png", "a FIFO": root / "a FIFO.png", "a missing file": root / "nope.png",
            "a symlink to /dev/zero": root / "link to dev zero.png", "a symlink loop": root / "link loop.png",
            "a valid PNG with a non-UTF-8 name": odd_name}


def image_cases(artifact: Path, work: Path, seed: int) -> list[Case]:
    """Every file of the corpus through ``edge-cls predict`` (one subprocess each)."""
    root = work / "images"
    root.mkdir()
    cases = []
    for name, path in image_files(root, seed).items():
        kind = "hostile image sizes" if ("header" in name or "20000" in name) else "malformed or unusual images"
        cases.append(classify(kind, name, run_cli(["predict", str(artifact), os.fsdecode(path)], timeout=120)))
    return cases


# ---------------------------------------------------------------- tampered artifacts


def _tampered(kind: str, name: str, source: Path, work: Path, change: Callable[[Path], None],
              env: dict[str, str] | None = None) -> Case:
    from edge_cls.runtimes import load

    target = work / "tamper"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    change(target)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return attempt(kind, name, lambda: load(target).close())
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _flip(name: str, position: int, mask: int) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        data = bytearray((directory / name).read_bytes())
        data[position] ^= mask
        (directory / name).write_bytes(bytes(data))

    return change


def flip_positions(size: int, rng: random.Random) -> dict[str, int]:
    """Every class of position: the first bytes (magic, header), the middle, the end, and random ones."""
    fixed = {"first byte": 0, "byte 4": 4, "byte 16": 16, "middle byte": size // 2, "byte -16": size - 16,
             "last byte": size - 1}
    return {**{k: v for k, v in fixed.items() if 0 <= v < size}, **{f"random byte {i}": rng.randrange(size)
                                                                       for i in range(8)}}


def artifact_cases(artifacts: dict[str, Path], work: Path, seed: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for art_name, source in artifacts.items():
        for file in sorted(p.name for p in source.iterdir() if p.name != "manifest.json"):
            for where, position in flip_positions((source / file).stat().st_size, rng).items():
                for mask in (0x01, 0xFF):
                    cases.append(_tampered("tampered artifacts: byte flips in model files",
                                           f"{art_name}/{file} {where} ^{mask:#04x}", source, work,
                                           _flip(file, position, mask)))
        cases += _layout_cases(art_name, source, work)
        cases += _manifest_flip_cases(art_name, source, work, rng)
    cases += _cli_tamper_sample(artifacts["openvino-fp32"], work)
    return cases


def _layout_cases(art_name: str, source: Path, work: Path) -> list[Case]:
    model = "model.onnx" if (source / "model.onnx").exists() else "model.bin"
    outside = work / "outside-copy"
    shutil.copy(source / model, outside)

    def write(name: str, data: bytes) -> Callable[[Path], None]:
        return lambda d: ((d / name).parent.mkdir(parents=True, exist_ok=True), (d / name).write_bytes(data))

    def replace_with(make: Callable[[Path], None]) -> Callable[[Path], None]:
        return lambda d: ((d / model).unlink(), make(d / model))

    changes = {
        f"{model} one byte longer": lambda d: (d / model).write_bytes((d / model).read_bytes() + b"\x00"),
        f"{model} one byte shorter": lambda d: (d / model).write_bytes((d / model).read_bytes()[:-1]),
        f"{model} emptied": lambda d: (d / model).write_bytes(b""),
        f"{model} removed": lambda d: (d / model).unlink(),
        f"{model} replaced by a directory": replace_with(lambda p: p.mkdir()),
        f"{model} replaced by a FIFO": replace_with(os.mkfifo),
        f"{model} a symlink to an identical copy outside": replace_with(lambda p: p.symlink_to(outside)),
        f"{model} a symlink to /dev/zero": replace_with(lambda p: p.symlink_to("/dev/zero")),
        f"{model} a dangling symlink": replace_with(lambda p: p.symlink_to(work / "nowhere")),
        "an extra file (model.onnx.data)": write("model.onnx.data", b"\x00" * 1024),
        "an extra hidden file": write(".DS_Store", b"x"),
        "an extra file in a sub-directory": write("extra/weights.bin", b"x"),
        "an extra empty directory": lambda d: (d / "extra").mkdir(),
        "an extra symlink to /etc": lambda d: (d / "etc").symlink_to("/etc"),
    }
    return [_tampered("tampered artifacts: sizes, extra files, links, special files", f"{art_name}: {name}", source,
                      work, change) for name, change in changes.items()] + [
        _tampered("tampered artifacts: re-signed manifest", f"{art_name}: file changed, manifest re-hashed, no key",
                  source, work, _rehash(model)),
        _tampered("tampered artifacts: re-signed manifest", f"{art_name}: file changed, manifest re-hashed, "
                  "loader has the key", _signed(source, work), work, _rehash(model), env={"EDGE_CLS_MANIFEST_KEY": KEY}),
    ]


def _rehash(model: str) -> Callable[[Path], None]:
    """The attack a hash alone cannot see: change a file and rewrite the manifest to match it."""
    from edge_cls.artifact.manifest import describe_files, load_manifest

    def change(directory: Path) -> None:
        _flip(model, (directory / model).stat().st_size // 2, 0xFF)(directory)
        manifest = load_manifest(directory, verify=False)
        manifest.files = describe_files(directory, [f.path for f in manifest.files])
        manifest.save(directory, key="an attacker's own key, 16+ bytes")

    return change


def _signed(source: Path, work: Path) -> Path:
    from edge_cls.artifact.manifest import load_manifest

    signed = work / f"signed-{source.name}"
    if not signed.exists():
        shutil.copytree(source, signed)
        load_manifest(signed).save(signed, key=KEY)
    return signed


def _manifest_flip_cases(art_name: str, source: Path, work: Path, rng: random.Random) -> list[Case]:
    size = (source / "manifest.json").stat().st_size
    positions = flip_positions(size, rng) | {f"random byte {i}": rng.randrange(size) for i in range(8, 24)}
    signed = _signed(source, work)
    cases = []
    for where, position in positions.items():
        change = _flip("manifest.json", position, 0x01)
        cases.append(_tampered("manifest.json byte flips, no key", f"{art_name} {where}", source, work, change))
        cases.append(_tampered("manifest.json byte flips, HMAC key", f"{art_name} {where}", signed, work, change,
                               env={"EDGE_CLS_MANIFEST_KEY": KEY}))
    return cases


def _cli_tamper_sample(source: Path, work: Path) -> list[Case]:
    """A few tampered artifacts through ``edge-cls predict``, for tracebacks and exit codes."""
    image = work / "images" / "valid PNG 640x480.png"
    changes = {"model.bin flipped": _flip("model.bin", 100, 0xFF), "extra file": lambda d: (d / "x").write_text("x"),
               "model.xml symlinked outside": lambda d: (shutil.move(d / "model.xml", work / "moved.xml"),
                                                        (d / "model.xml").symlink_to(work / "moved.xml")),
               "manifest truncated": lambda d: (d / "manifest.json").write_text("{"),
               "model.bin one byte shorter": lambda d: (d / "model.bin").write_bytes((d / "model.bin").read_bytes()[:-1])}
    cases = []
    for name, change in changes.items():
        target = work / "tamper-cli"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        change(target)
        cases.append(classify("tampered artifacts through edge-cls predict", name,
                              run_cli(["predict", str(target), str(image)])))
    return cases


# ---------------------------------------------------------------- fuzzed manifests


def hostile_values() -> list[object]:
    deep: object = []
    for _ in range(50):
        deep = [deep]
    return [None, True, False, 0, -1, 2**63, 1e308, float("inf"), "", "x", "\x1b[2J\x1b[31mred", "\ud800", [], [[]],
            {}, {"a": {"b": {"c": {}}}}, "A" * 100_000, deep, list(range(10_000)), [None] * 3, ["a", 1, None]]


def field_paths(data: dict) -> list[tuple]:
    paths: list[tuple] = [(key,) for key in data]
    for key, value in data.items():
        if isinstance(value, dict):
            paths += [(key, inner) for inner in value]
    paths += [("files", 0, key) for key in data["files"][0]] + [("labels", 0)]
    return paths


def _set(data: dict, path: tuple, value: object) -> None:
    for step in path[:-1]:
        data = data[step]
    if value is _DELETE:
        del data[path[-1]]
    else:
        data[path[-1]] = value


_DELETE = object()


def random_json(rng: random.Random, depth: int = 0) -> object:
    choice = rng.randrange(8 if depth < 4 else 5)
    scalars = [None, rng.random() < 0.5, rng.randint(-10**6, 10**6), rng.uniform(-1e9, 1e9),
               "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(6)))]
    if choice < 5:
        return scalars[choice]
    if choice < 7:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["format", "labels", "files", "preprocess", "x"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def manifest_cases(artifact: Path, work: Path, seed: int) -> list[Case]:
    from edge_cls.artifact.manifest import load_manifest

    rng = random.Random(seed)
    valid = json.loads((artifact / "manifest.json").read_text())
    target = work / "fuzz"
    shutil.copytree(artifact, target)
    path = target / "manifest.json"

    def load_text(text: str | bytes) -> Callable[[], object]:
        return lambda: (path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")),
                        load_manifest(target))

    cases, texts = [], []
    for field in field_paths(valid):
        for value in [*hostile_values(), _DELETE]:
            data = json.loads(json.dumps(valid))
            _set(data, field, value)
            texts.append(json.dumps(data))
            shown = "deleted" if value is _DELETE else repr(value)[:30]
            cases.append(attempt("fuzzed manifests: each field replaced", f"{'.'.join(map(str, field))} = {shown}",
                                 load_text(texts[-1])))
    for i in range(200):
        cases.append(attempt("fuzzed manifests: random JSON and bytes", f"random JSON #{i}",
                             load_text(json.dumps(random_json(rng)))))
        cases.append(attempt("fuzzed manifests: random JSON and bytes", f"random bytes #{i}",
                             load_text(rng.randbytes(rng.randrange(200)))))
    for i, text in enumerate(rng.sample(texts, 12)):
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        cases.append(classify("fuzzed manifests through edge-cls info", f"sample #{i}", run_cli(["info", str(target)])))
    return cases
