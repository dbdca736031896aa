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


def test_small_folders_warn_and_can_be_augmented(digits_root, caplog):
    files = sorted((digits_root / "val" / "3").glob("*.png"))[:5]
    plain = CalibrationSet(files, SPEC)
    assert len(plain) == 5 and "calibrating on only 5 images" in caplog.text
    augmented = CalibrationSet(files, SPEC, augment_to=40, seed=3)
    assert len(augmented) == 40
    np.testing.assert_array_equal(augmented.array[:5], plain.array)  # the originals first, then new views
    views = {image.tobytes() for image in augmented.array[5:]}
    assert len(views) > 30 and not views & {image.tobytes() for image in plain.array}
    np.testing.assert_array_equal(augmented.array, CalibrationSet(files, SPEC, augment_to=40, seed=3).array)


def test_preprocessed_sets_are_cached_by_spec_and_files(digits_root, tmp_path):
    files = sorted((digits_root / "val").rglob("*.png"))[:12]
    first = CalibrationSet(files, SPEC, cache_dir=tmp_path)
    [cached] = list(tmp_path.glob("calibration-*.npy"))
    np.testing.assert_array_equal(np.load(cached), first.array)
    np.save(cached, np.zeros_like(first.array))  # a cache hit reads the file, not the images
    assert not CalibrationSet(files, SPEC, cache_dir=tmp_path).array.any()
    other_spec = PreprocessSpec(input_size=(16, 16), interpolation="bicubic")
    assert CalibrationSet(files, other_spec, cache_dir=tmp_path).array.any()  # another spec, another entry
    assert len(list(tmp_path.glob("calibration-*.npy"))) == 2
