import numpy as np
import pytest
from PIL import Image

from edge_cls.errors import ConfigError
from edge_cls.measure.latency import BenchResult, bench_artifact, directory_size, time_calls
from edge_cls.measure.tables import markdown_table, text_table
from edge_cls.quality.plots import plot_accuracy_latency


def test_time_calls_counts_and_validates():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=3, iterations=7)
    assert len(times) == 7 and len(calls) == 10 and (times >= 0).all()
    with pytest.raises(ConfigError):
        time_calls(lambda: None, iterations=0)


def test_bench_artifact_without_data(artifacts):
    row = bench_artifact(artifacts["openvino-fp32"], iterations=5, warmup=1)
    assert row.backend == "openvino" and row.runtime_precision == "f32" and row.top1 is None
    assert row.p50_ms > 0 and row.p90_ms >= row.p50_ms and row.throughput_ips > 0
    assert row.size_bytes == directory_size(artifacts["openvino-fp32"]) > 0


def row(name, top1, p50):
    return BenchResult(
        name=name,
        backend="onnxruntime",
        precision="fp32",
        runtime_precision="f32",
        size_bytes=2_000_000,
        p50_ms=p50,
        p90_ms=p50 * 1.2,
        p99_ms=p50 * 1.5,
        throughput_ips=100.0,
        throughput_batch=8,
        top1=top1,
    )


def test_tables_and_plot(tmp_path):
    rows = [row("a", 0.9, 1.0), row("b", None, 2.0)]
    text = text_table(rows)
    assert "90.0%" in text and text.splitlines()[1].startswith("---")
    assert markdown_table(rows).count("\n") == 3
    path = plot_accuracy_latency(rows, tmp_path / "plot.png")
    assert Image.open(path).size[0] > 100


def test_accuracy_streamed_in_batches_equals_accuracy_on_the_whole_split(artifacts, digits_root):
    from edge_cls.artifact.manifest import load_manifest
    from edge_cls.data import iter_split_batches, labelled_split, preprocess_split

    path = artifacts["onnx-fp32"]
    manifest = load_manifest(path)
    split = labelled_split(digits_root, split="test", classes=manifest.labels)
    inputs, targets = preprocess_split(split, manifest.spec)
    reference = np.random.default_rng(0).standard_normal((len(targets), 10)).astype(np.float32)
    whole = bench_artifact(path, data=(inputs, targets), reference_logits=reference, iterations=5, warmup=1)
    streamed = bench_artifact(path, batches=iter_split_batches(split, manifest.spec, batch_size=7),
                              reference_logits=reference, iterations=5, warmup=1)
    assert (streamed.top1, streamed.top1_agreement, streamed.images) == (whole.top1, whole.top1_agreement, 60)
    with pytest.raises(ConfigError, match="no images"):
        bench_artifact(path, batches=iter([]), iterations=5, warmup=1)
