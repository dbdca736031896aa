import numpy as np
import pytest
from PIL import Image

from edge_cls.data import DEMO_SPLIT_SIZES, load_splits, preprocess_split, scan_image_folder
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


def test_scan_orders_classes_and_targets(tmp_path, make_folder):
    split = scan_image_folder(make_folder(tmp_path, {"b": 2, "a": 3}))
    assert split.classes == ["a", "b"] and split.targets == [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "layout, match",
    [({}, "no class sub-directories"), ({"a": 0, "b": 0}, "no images"), ({"a": 2, "b": 0}, "have no images")],
)
def test_bad_folders(tmp_path, make_folder, layout, match):
    with pytest.raises(DataError, match=match):
        scan_image_folder(make_folder(tmp_path / "d", layout) if layout else (tmp_path / "d").mkdir() or tmp_path / "d")


def test_missing_split_and_unknown_class(tmp_path, make_folder):
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_folder(tmp_path / "val", {"a": 1})
    with pytest.raises(DataError, match="missing: test"):
        load_splits(tmp_path)
    make_folder(tmp_path / "test", {"c": 1})
    with pytest.raises(DataError, match=r"classes \['c'\]"):
        load_splits(tmp_path)


def test_preprocess_split_uses_the_spec(digits_root):
    split = scan_image_folder(digits_root / "val")
    spec = PreprocessSpec(input_size=(16, 16))
    batch, targets = preprocess_split(split, spec)
    assert batch.shape == (len(split), 3, 16, 16) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], spec(split.paths[0]))
    assert targets.tolist() == split.targets


def test_multi_label_csv(multilabel_root):
    from edge_cls.data import load_splits

    splits = load_splits(multilabel_root)
    train = splits["train"]
    assert train.multi_label and len(train.classes) == 12 and "even" in train.classes
    assert train.targets.shape == (240, 12) and set(train.targets.sum(1)) == {2.0}
    assert train.class_counts()["even"] == 120
    assert splits["test"].classes == train.classes


def test_csv_labels_outside_the_class_list(multilabel_root, tmp_path):
    from edge_cls.data import read_label_csv
    from edge_cls.errors import DataError

    lines = (multilabel_root / "val.csv").read_text().splitlines()
    bad = tmp_path / "val.csv"
    bad.write_text("\n".join(lines[:3] + [lines[3].split(",")[0] + ",d1 prime"]) + "\n")
    with pytest.raises(DataError, match="labels not in the class list: prime"):
        read_label_csv(bad, classes=[f"d{i}" for i in range(10)] + ["even", "odd"])
    (tmp_path / "missing.csv").write_text("path,labels\nnope.png,d1\n")
    with pytest.raises(DataError, match="1 listed images do not exist"):
        read_label_csv(tmp_path / "missing.csv")
    (tmp_path / "header.csv").write_text("file,tags\na.png,x\n")
    with pytest.raises(DataError, match="header 'path,labels'"):
        read_label_csv(tmp_path / "header.csv")


def test_a_class_in_classes_txt_without_images(multilabel_root, tmp_path):
    import shutil

    from edge_cls.data import load_splits
    from edge_cls.errors import DataError

    for name in ("train.csv", "val.csv", "test.csv"):
        shutil.copy(multilabel_root / name, tmp_path / name)
    (tmp_path / "classes.txt").write_text("\n".join([f"d{i}" for i in range(10)] + ["even", "odd", "prime"]) + "\n")
    with pytest.raises(DataError, match=r"classes \['prime'\] have no images"):
        load_splits(tmp_path)


def test_class_and_sample_weights_balance_the_classes(tmp_path):
    from edge_cls.data import ImageFolderSplit, class_weights, sample_weights

    split = ImageFolderSplit(tmp_path, ["a", "b"], [tmp_path] * 5, [0, 0, 0, 0, 1])
    weights = class_weights(split)
    assert weights[1] / weights[0] == pytest.approx(4.0) and weights.mean() == pytest.approx(1.0)
    per_image = sample_weights(split)
    assert per_image[:4].sum() == pytest.approx(per_image[4])  # each class drawn equally often


def test_empty_dataset_directory(tmp_path):
    from edge_cls.data import load_splits
    from edge_cls.errors import DataError

    for split in ("train", "val", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        load_splits(tmp_path)


def test_the_demo_writer_never_replaces_a_directory_it_did_not_write(tmp_path):
    # Before: `edge-cls build --output DIR` swapped DIR/data for the demo set and deleted what was there.
    from edge_cls.data import write_demo_dataset

    root = tmp_path / "data"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "tom.png").write_bytes(b"the user's own image")
    with pytest.raises(DataError, match=r"not written by edge-cls .* pass --data-dir .* or choose another --output"):
        write_demo_dataset(root)
    assert (root / "train" / "cat" / "tom.png").read_bytes() == b"the user's own image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_non_utf8_classes_and_csv_are_data_errors(multilabel_root, tmp_path):
    import shutil

    from edge_cls.data import labelled_split, read_label_csv

    for name in ("train.csv", "val.csv", "test.csv"):
        shutil.copy(multilabel_root / name, tmp_path / name)
    (tmp_path / "classes.txt").write_bytes(b"d0\n\xff\xfe\n")
    for read in (load_splits, labelled_split):
        with pytest.raises(DataError, match="classes.txt is not readable UTF-8"):
            read(tmp_path)
    (tmp_path / "latin1.csv").write_bytes(b"path,labels\ncaf\xe9.png,d1\n")
    with pytest.raises(DataError, match="latin1.csv is not a readable CSV"):
        read_label_csv(tmp_path / "latin1.csv")


def test_a_split_preprocessed_to_a_file_is_memory_mapped_and_equal(digits_root, tmp_path):
    from edge_cls.data import preprocess_split_to_file

    split = scan_image_folder(digits_root / "val")
    spec = PreprocessSpec(input_size=(16, 16))
    batch, targets = preprocess_split_to_file(split, spec, tmp_path / "val.npy")
    expected, expected_targets = preprocess_split(split, spec)
    assert isinstance(batch, np.memmap) and batch.shape == expected.shape
    np.testing.assert_array_equal(batch, expected)
    np.testing.assert_array_equal(targets, expected_targets)
    assert [p.name for p in tmp_path.iterdir()] == ["val.npy"]
    shard, _ = preprocess_split_to_file(split, spec, tmp_path / "val.rank1.npy", shard=(1, 3))
    np.testing.assert_array_equal(shard[1::3], expected[1::3])
    assert not shard[0::3].any() and not shard[2::3].any()  # the other ranks' rows: left empty


def test_preprocessing_to_a_file_holds_one_batch_not_the_split(digits_root, tmp_path):
    import tracemalloc

    from edge_cls.data import preprocess_split_to_file

    split = scan_image_folder(digits_root / "train")  # 240 images
    spec = PreprocessSpec(input_size=(32, 32))
    whole = len(split) * 3 * 32 * 32 * 4
    tracemalloc.start()
    try:
        preprocess_split_to_file(split, spec, tmp_path / "train.npy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole / 20, (peak, whole)  # numpy reports its buffers to tracemalloc


def test_image_files_is_the_one_scan_and_says_what_it_looked_for(tmp_path):
    from PIL import Image

    from edge_cls.data import image_files, iter_images

    with pytest.raises(DataError, match="holds no images .looked for .*jpg"):
        image_files(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        image_files(tmp_path / "missing")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "a.png")
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="only in sub-folders: add --recursive"):
        image_files(tmp_path, recursive=False)
    assert image_files(tmp_path) == [tmp_path / "sub" / "a.png"]
    assert list(iter_images([tmp_path / "sub" / "notes.txt", tmp_path])) == [
        tmp_path / "sub" / "notes.txt", tmp_path / "sub" / "a.png"]  # a named file is kept: its error is its own
