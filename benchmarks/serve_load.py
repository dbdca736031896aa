"""`edge-cls serve` under load: every request must be answered (200, or 503 with Retry-After), never
reset, and a refusal must be immediate.

An `edge-cls serve` subprocess (OpenVINO, the demo-size student: mobilenetv3_small_100 at 64 px with
random timm weights, speed only) with ``--max-queue 16``. For 4, 16 and 64 concurrent clients, each
client posts a 640x480 JPEG to ``/predict`` on a fresh connection, reads the answer to the end, and
posts the next, until the level's requests are spent. The clients are one asyncio loop in this
process (a thread per client would measure the client's own GIL contention). Per level: requests/s,
status counts, connection resets and other transport errors, p50/p99 latency per status (connect to
last byte), whether every 503 carried Retry-After.

    flock /tmp/edge-cls-bench.lock python benchmarks/serve_load.py [--clients 4 16 64] [--requests 768]
        [--max-queue 16] [--name serve_load]

Writes benchmarks/results/NAME.{md,json}; the artifact and the JPEG are kept in build/serve_load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from edge_cls.measure.machine import machine_description
from edge_cls.serve import LISTEN_BACKLOG

RESULTS = Path(__file__).parent / "results"
WORK = Path("build/serve_load")
MODEL, SIZE = "mobilenetv3_small_100", 64


def build_artifact() -> Path:
    """The OpenVINO FP32 artifact of a random-weight demo-size student (built once, then reused)."""
    out = WORK / "artifacts"
    if (out / "openvino-fp32" / "manifest.json").is_file():
        return out / "openvino-fp32"
    from edge_cls.export import ReferenceSet, export_artifacts, resolve_targets
    from edge_cls.training.models import ModelRecipe, create_model, spec_for_model

    model = create_model(ModelRecipe(name=MODEL, num_classes=10)).eval()
    spec = spec_for_model(model, input_size=SIZE)
    batch = np.stack([spec(photo()) for _ in range(8)])
    [artifact] = export_artifacts(model, spec, [str(i) for i in range(10)], out,
                                  resolve_targets(["openvino"], ["fp32"]), reference=ReferenceSet.from_model(model, batch),
                                  model_name=MODEL)
    return artifact.path


def photo() -> Path:
    path = WORK / "photo.jpg"
    if not path.is_file():
        sys.path.insert(0, str(Path(__file__).parent))
        from runtime import photo_like

        WORK.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(np.random.default_rng(0))).save(path, quality=90)
    return path


def start_server(artifact: Path, max_queue: int, backlog: int | None) -> tuple[subprocess.Popen, str, int]:
    """`edge-cls serve` as a subprocess; ``backlog`` replaces its listen backlog (5: socketserver's default,
    what edge-cls used before) to show what the backlog alone changes."""
    argv = ["serve", str(artifact), "--port", "0", "--max-queue", str(max_queue)]
    command = [sys.executable, "-m", "edge_cls.cli", *argv]
    if backlog is not None:
        command = [sys.executable, "-c", "import sys, edge_cls.serve.server as s; "
                   f"s._HTTPServer.request_queue_size = {backlog}; from edge_cls.cli import main; "
                   f"sys.exit(main({argv!r}))"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    match = re.search(r"http://([\d.]+):(\d+)", process.stdout.readline())
    if not match:
        process.kill()
        raise SystemExit("the server did not start")
    return process, match.group(1), int(match.group(2))


async def one_request(host: str, port: int, request: bytes) -> tuple[str, float, bool]:
    """(status or transport error, seconds from connect to the last byte, Retry-After present)."""
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        data = await reader.read()  # HTTP/1.0 answers: the server closes after the body
    except ConnectionResetError:
        return "reset", time.perf_counter() - started, False
    except (BrokenPipeError, ConnectionError, OSError) as e:
        return type(e).__name__, time.perf_counter() - started, False
    finally:
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - started
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    if not head.startswith("HTTP/"):
        return "no answer", elapsed, False
    return head.split()[1], elapsed, "\nretry-after:" in head.lower()


async def level(host: str, port: int, request: bytes, clients: int, total: int) -> list[tuple[str, float, bool]]:
    remaining = [total]
    outcomes: list[tuple[str, float, bool]] = []

    async def client() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            outcomes.append(await one_request(host, port, request))

    await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


def summary(clients: int, outcomes: list[tuple[str, float, bool]], seconds: float) -> dict:
    counts = Counter(status for status, _, _ in outcomes)
    latency = {}
    for status in sorted(counts):
        ms = np.array([t for s, t, _ in outcomes if s == status]) * 1e3
        latency[status] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                           "max_ms": float(ms.max())}
    refused = [retry for status, _, retry in outcomes if status == "503"]
    return {"clients": clients, "requests": len(outcomes), "seconds": seconds, "req_per_s": len(outcomes) / seconds,
            "answered_per_s": sum(s in ("200", "503") for s, _, _ in outcomes) / seconds,
            "status_counts": dict(counts), "latency": latency, "503_with_retry_after": all(refused) if refused else None,
            "resets": counts.get("reset", 0)}


def _cell(latency: dict, status: str) -> str:
    return f"{latency[status]['p50_ms']:.1f} / {latency[status]['p99_ms']:.1f}" if status in latency else "-"


def markdown(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    lines = [
        "# `edge-cls serve` under load",
        "",
        f"Machine: {machine_description()}. Command: `{command}`.",
        f"Server: `edge-cls serve` (OpenVINO FP32 artifact, {MODEL} at {SIZE} px, random weights) with "
        f"`--max-queue {args.max_queue}`, on 127.0.0.1. Each client posts a 640x480 JPEG to `/predict` on a new "
        "connection and waits for the whole answer before the next. Latency: connect to last byte, per status. "
        f"Server and clients share the machine's CPUs. Backlog {LISTEN_BACKLOG} is what `edge-cls serve` listens "
        "with; 5 (socketserver's default, what it used before) is shown for comparison, same run.",
        "",
        "| listen backlog | clients | requests | req/s | 200 | 503 | resets | other errors | 200 p50 / p99 ms | 503 p50 / p99 ms "
        "| every 503 had Retry-After |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, lat = r["status_counts"], r["latency"]
        other = sum(v for k, v in c.items() if k not in ("200", "503", "reset"))

        lines.append(f"| {r['backlog']} | {r['clients']} | {r['requests']} | {r['req_per_s']:.0f} | {c.get('200', 0)} | {c.get('503', 0)} "
                     f"| {r['resets']} | {other} | {_cell(lat, '200')} | {_cell(lat, '503')} | "
                     f"{'-' if r['503_with_retry_after'] is None else 'yes' if r['503_with_retry_after'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--requests", type=int, default=768, help="requests per level (default: 768)")
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--backlogs", type=int, nargs="+", default=[],
                        help="also run with these listen backlogs (5: the standard library's default)")
    parser.add_argument("--name", default="serve_load")
    args = parser.parse_args()
    artifact, image = build_artifact(), photo().read_bytes()
    request = (f"POST /predict?k=3 HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\nContent-Length: {len(image)}"
               "\r\nConnection: close\r\n\r\n").encode() + image
    rows = []
    for backlog in [None, *args.backlogs]:
        process, host, port = start_server(artifact, args.max_queue, backlog)
        try:
            asyncio.run(level(host, port, request, 4, 32))  # warm-up, not reported
            for clients in args.clients:
                started = time.perf_counter()
                outcomes = asyncio.run(level(host, port, request, clients, args.requests))
                rows.append({"backlog": backlog or LISTEN_BACKLOG,
                             **summary(clients, outcomes, time.perf_counter() - started)})
                print(json.dumps({k: rows[-1][k] for k in ("backlog", "clients", "req_per_s", "status_counts")}),
                      file=sys.stderr)
        finally:
            process.terminate()
            process.wait(timeout=60)
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    text = markdown(rows, args, command.strip())
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"machine": machine_description(), "command": command.strip(), "max_queue": args.max_queue,
         "cpus": os.cpu_count(), "levels": rows}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
