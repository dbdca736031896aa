"""Scoring on Ray Data: a real local Ray cluster (2 CPUs) started by the test, real image files,
the Parquet rows compared with `edge-cls predict --jsonl`, and an actor killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="pip install 'edge-cls[ray]' (in [dev])")
pq = pytest.importorskip("pyarrow.parquet", reason="pip install 'edge-cls[ray]' (in [dev])")

from edge_cls.scale.ray_data import predict_to_parquet, record_from_row, records_dataset  # noqa: E402

pytestmark = pytest.mark.slow
ARTIFACT = "onnx-fp32"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module (fractional CPUs let decode and inference share them)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(digits_root, tmp_path_factory):
    """60 digit PNGs in class folders, and one file that is no image."""
    folder = tmp_path_factory.mktemp("score")
    shutil.copytree(digits_root / "test", folder / "photos")
    (folder / "photos" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    return folder / "photos"


def by_path(records):
    keyed = {r["path"]: r for r in records}
    assert len(keyed) == len(records), "a path appears twice"
    return keyed


def assert_same_records(got, want):
    assert set(got) == set(want)
    for path, record in want.items():
        other = dict(got[path])
        scores = [p.pop("score") for p in other.get("predictions", [])]
        expected = json.loads(json.dumps(record))
        wanted = [p.pop("score") for p in expected.get("predictions", [])]
        assert other == expected, path
        assert scores == pytest.approx(wanted, abs=1e-6), path


def test_parquet_rows_equal_the_jsonl_records(cluster, artifacts, images, tmp_path):
    jsonl = subprocess.run([sys.executable, "-m", "edge_cls.cli", "predict", str(artifacts[ARTIFACT]), str(images),
                            "--recursive", "--jsonl", "--topk", "3"], capture_output=True, text=True, timeout=300)
    assert jsonl.returncode == 1 and "1 of 61 images could not be read" in jsonl.stderr  # the broken file
    want = by_path([json.loads(line) for line in jsonl.stdout.splitlines()])
    out = tmp_path / "scores"
    rows, failed = predict_to_parquet(artifacts[ARTIFACT], [images], out, recursive=True, k=3, actors=2,
                                      actor_cpus=0.75, decode_cpus=0.25, batch_size=8)
    assert (rows, failed) == (61, 1)
    got = by_path([record_from_row(r) for r in pq.read_table(out).to_pylist()])
    assert_same_records(got, want)
    assert "not an image format" in got[str(images / "3" / "broken.png")]["error"]
    with pytest.raises(Exception, match="no images itself, only in sub-folders: add --recursive"):
        predict_to_parquet(artifacts[ARTIFACT], [images], out)


def classify_actor_pids() -> list[int]:
    """The processes of live inference actors (Ray names them after the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"ClassifyActor" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_an_actor_killed_mid_run_loses_no_image_and_duplicates_none(cluster, artifacts, images):
    dataset = records_dataset(artifacts[ARTIFACT], [images], recursive=True, k=1, actors=1, actor_cpus=1,
                              decode_cpus=0.5, batch_size=2)
    rows, killed = [], []
    for row in dataset.iter_rows():
        rows.append(row["path"])
        if len(rows) == 4:  # 29 batches still to come, from the one actor there is
            killed = classify_actor_pids()
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
    assert killed, "no inference actor was found to kill"
    assert len(rows) == len(set(rows)) == 61  # the rest came from the restarted actor, retried batches once
    assert set(rows) == {str(p) for p in images.rglob("*.png")}
