import numpy as np
import pytest
from PIL import Image

from edge_cls.calibration_data import CalibrationSet
from edge_cls.data import scan_image_folder
from edge_cls.errors import DataError
from edge_cls.preprocess import PreprocessSpec

SPEC = PreprocessSpec(input_size=(16, 16))


def test_from_split_is_class_balanced_and_reproducible(digits_root):
    split = scan_image_folder(digits_root / "train")
    first = CalibrationSet.from_split(split, SPEC, size=20)
    assert first.array.shape == (20, 3, 16, 16)
    chosen = {image.tobytes() for image in first.array}
    per_class = [sum(SPEC(p).tobytes() in chosen for p, t in zip(split.paths, split.targets) if t == c)
                 for c in range(len(split.classes))]
    assert per_class == [2] * 10
    np.testing.assert_array_equal(first.array, CalibrationSet.from_split(split, SPEC, size=20).array)
    assert sum(b.shape[0] for b in first.batches(8)) == 20


def test_from_folder_preprocesses_with_the_spec(digits_root):
    calibration = CalibrationSet.from_folder(digits_root / "val", SPEC, size=5)
    assert len(calibration) == 5
    files = sorted((digits_root / "val").rglob("*.png"))
    assert any(np.array_equal(calibration.array[0], SPEC(f)) for f in files)


def test_unreadable_images_are_skipped(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    calibration = CalibrationSet.from_folder(tmp_path, SPEC)
    assert len(calibration) == 1 and calibration.skipped == [str(tmp_path / "bad.png")]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no images"):
        CalibrationSet.from_folder(tmp_path, SPEC)
    with pytest.raises(DataError, match="does not exist"):
        CalibrationSet.from_folder(tmp_path / "missing", SPEC)
