"""The training-side dataset over an edge-cls split."""

import numpy as np
import pytest

from edge_cls.data import scan_image_folder
from edge_cls.errors import DataError
from edge_cls.training.datasets import ImageDataset


def test_undecodable_images_are_skipped_then_stop(tmp_path, make_folder):
    root = make_folder(tmp_path, {"a": 30, "b": 30})
    (root / "a" / "0.png").write_bytes(b"garbage")
    dataset = ImageDataset(scan_image_folder(root), lambda image: np.asarray(image))
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 60 and len(dataset.bad) == 1
    for i in range(1, 5):
        (root / "b" / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot be decoded"):
        [dataset[i] for i in range(len(dataset))]
