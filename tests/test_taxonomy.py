import numpy as np
import pytest

from edge_cls.errors import ConfigError
from edge_cls.taxonomy import Taxonomy

LABELS = ["husky", "beagle", "tabby", "siamese", "car"]
PARENTS = {"husky": "dog", "beagle": "dog", "tabby": "cat", "siamese": "cat", "dog": "animal", "cat": "animal"}


def test_roll_up_sums_probabilities_to_every_ancestor():
    tax = Taxonomy.from_mapping(PARENTS, LABELS)
    assert tax.nodes[:5] == tuple(LABELS) and set(tax.nodes[5:]) == {"animal", "cat", "dog"}
    probs = np.array([[0.3, 0.2, 0.25, 0.15, 0.1]])
    rolled = tax.roll_up(probs)
    assert rolled[0, tax.index("dog")] == pytest.approx(0.5) and rolled[0, tax.index("animal")] == pytest.approx(0.9)
    assert tax.path("tabby") == ("animal", "cat", "tabby") and tax.path("car") == ("car",)
    assert tax.roll_up(probs, multi_label=True)[0, tax.index("dog")] == pytest.approx(0.3)


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "husky: dog\nbeagle: dog\ndog: animal\n"),
    (".json", '{"husky": "dog", "beagle": "dog", "dog": "animal"}'),
    (".csv", "class,parent\nhusky,dog\nbeagle,dog\ndog,animal\n"),
])
def test_files(tmp_path, suffix, text):
    path = tmp_path / f"tax{suffix}"
    path.write_text(text)
    tax = Taxonomy.from_file(path, LABELS)
    assert tax.path("beagle") == ("animal", "dog", "beagle") and tax.parents["tabby"] is None


@pytest.mark.parametrize("mapping, match", [
    ({"husky": "dog", "dog": "husky"}, "cycle"),
    ({"husky": "husky"}, "its own parent"),
    ({"wolf": "dog"}, "neither classes"),
    ({"husky": 3}, "must be strings"),
    ([("husky", "dog")], "must map each class"),
])
def test_bad_taxonomies(mapping, match):
    with pytest.raises(ConfigError, match=match):
        Taxonomy.from_mapping(mapping, LABELS)


def test_bad_files(tmp_path):
    (tmp_path / "t.csv").write_text("name,up\nhusky,dog\n")
    with pytest.raises(ConfigError, match="class,parent"):
        Taxonomy.from_file(tmp_path / "t.csv", LABELS)
    (tmp_path / "t.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="UTF-8"):
        Taxonomy.from_file(tmp_path / "t.json", LABELS)
    with pytest.raises(ConfigError, match="does not exist"):
        Taxonomy.from_file(tmp_path / "none.yaml", LABELS)


def test_accuracy_per_level_forgives_confusions_inside_a_parent():
    tax = Taxonomy.from_mapping(PARENTS, LABELS)
    # husky mistaken for beagle: wrong at the class level, right at "dog" and "animal"
    probs = np.array([[0.1, 0.7, 0.1, 0.05, 0.05], [0.1, 0.1, 0.6, 0.1, 0.1], [0.05, 0.05, 0.1, 0.1, 0.7]])
    targets = np.array([0, 2, 4])
    levels = tax.level_accuracy(probs, targets)
    assert levels[2]["accuracy"] == pytest.approx(0.5) and levels[2]["images"] == 2  # car has no depth-2 node
    assert levels[1]["accuracy"] == 1.0 and levels[1]["images"] == 2
    assert levels[0]["accuracy"] == 1.0 and levels[0]["images"] == 3  # roots: animal, car
