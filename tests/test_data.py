import numpy as np
import pytest
from PIL import Image

from edge_cls.data import DEMO_SPLIT_SIZES, ImageDataset, load_splits, preprocess_split, scan_image_folder
from edge_cls.errors import DataError
from edge_cls.preprocess import PreprocessSpec


def test_demo_set_is_real_png_splits(demo_root):
    splits = load_splits(demo_root)
    assert {name: len(s) for name, s in splits.items()} == DEMO_SPLIT_SIZES
    assert splits["train"].classes == [str(i) for i in range(10)]
    assert min(splits["train"].class_counts().values()) > 300
    image = Image.open(splits["test"].paths[0])
    assert image.size == (28, 28) and image.mode == "L"
    train, test = set(p.name for p in splits["train"].paths), set(p.name for p in splits["test"].paths)
    assert not train & test


def make_folder(root, layout):
    for cls, count in layout.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / cls / f"{i}.png")
    return root


def test_scan_orders_classes_and_targets(tmp_path):
    split = scan_image_folder(make_folder(tmp_path, {"b": 2, "a": 3}))
    assert split.classes == ["a", "b"] and split.targets == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("layout, match", [({}, "no class sub-directories"), ({"a": 0, "b": 0}, "no images"), ({"a": 2, "b": 0}, "have no images")])
def test_bad_folders(tmp_path, layout, match):
    with pytest.raises(DataError, match=match):
        scan_image_folder(make_folder(tmp_path / "d", layout) if layout else (tmp_path / "d").mkdir() or tmp_path / "d")


def test_missing_split_and_unknown_class(tmp_path):
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_folder(tmp_path / "val", {"a": 1})
    with pytest.raises(DataError, match="missing: test"):
        load_splits(tmp_path)
    make_folder(tmp_path / "test", {"c": 1})
    with pytest.raises(DataError, match=r"classes \['c'\]"):
        load_splits(tmp_path)


def test_undecodable_images_are_skipped_then_stop(tmp_path):
    root = make_folder(tmp_path, {"a": 30, "b": 30})
    (root / "a" / "0.png").write_bytes(b"garbage")
    dataset = ImageDataset(scan_image_folder(root), lambda image: np.asarray(image))
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 60 and len(dataset.bad) == 1
    for i in range(1, 5):
        (root / "b" / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot be decoded"):
        [dataset[i] for i in range(len(dataset))]


def test_preprocess_split_uses_the_spec(digits_root):
    split = scan_image_folder(digits_root / "val")
    spec = PreprocessSpec(input_size=(16, 16))
    batch, targets = preprocess_split(split, spec)
    assert batch.shape == (len(split), 3, 16, 16) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], spec(split.paths[0]))
    assert targets.tolist() == split.targets
