from pathlib import Path

import pytest

from edge_cls.errors import ConfigError
from edge_cls.training.config import BuildConfig, dump_yaml, from_dict, merge, read_config_file, to_plain

YAML = """
teacher: vit_small_patch16_224.augreg_in21k_ft_in1k
teacher_pretrained: true
student: mobilenetv3_large_100
input_size: 224
formats: [onnx]
student_train:
  epochs: 100
  mixup: 0.8
  sizes: [160, 192, 224]
distill:
  temperature: 2
"""


def test_yaml_config_to_build_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    data = merge(to_plain(BuildConfig()), read_config_file(path))
    config = from_dict(BuildConfig, data)
    assert config.student_train.sizes == (160, 192, 224) and config.student_train.epochs == 100
    assert config.student_train.lr == BuildConfig().student_train.lr  # untouched keys keep their defaults
    assert config.teacher_train.epochs == BuildConfig().teacher_train.epochs and config.distill.temperature == 2.0
    assert config.formats == ("onnx",) and isinstance(config.out_dir, Path)
    again = from_dict(BuildConfig, merge(to_plain(BuildConfig()), __import__("yaml").safe_load(dump_yaml(config))))
    assert again == config


def test_toml_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('student = "efficientnet_b0"\n[distill]\nkind = "hard"\n')
    config = from_dict(BuildConfig, merge(to_plain(BuildConfig()), read_config_file(path)))
    assert config.student == "efficientnet_b0" and config.distill.kind == "hard"


def test_flags_override_the_file():
    merged = merge({"student_train": {"epochs": 100, "lr": 0.1}, "student": "a"},
                   {"student_train": {"epochs": 3, "lr": None}, "student": None, "teacher": "t"})
    assert merged == {"student_train": {"epochs": 3, "lr": 0.1}, "student": "a", "teacher": "t"}


@pytest.mark.parametrize("text, match", [
    ("studnet: x\n", "unknown option.*studnet"),
    ("student_train:\n  epoch: 3\n", r"unknown option.*epoch in config.student_train"),
    ("input_size: big\n", "config.input_size must be int"),
    ("- a\n- b\n", "must hold a mapping"),
    ("a: [\n", "not valid YAML"),
    ("distill:\n  kind: attention\n", "distill kind must be one of"),
])
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        from_dict(BuildConfig, merge(to_plain(BuildConfig()), read_config_file(path)))


def test_missing_or_unsupported_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "nope.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in \.yaml"):
        read_config_file(tmp_path / "c.json")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_documented_recipes_are_valid_configs(path):
    config = from_dict(BuildConfig, merge(to_plain(BuildConfig()), read_config_file(path)))
    assert config.student_train.sizes[-1] == config.input_size
    assert config.teacher_pretrained and config.student_pretrained


def test_a_section_with_no_flags_does_not_hide_the_files_value():
    assert merge({"distill": "hard"}, {"distill": {"kind": None, "temperature": None}}) == {"distill": "hard"}
    with pytest.raises(ConfigError, match="config.distill must be a mapping"):
        from_dict(BuildConfig, merge(to_plain(BuildConfig()), {"distill": "hard"}))


def test_a_flag_can_switch_off_what_the_file_switched_on(tmp_path):
    from edge_cls.cli import build_parser
    from edge_cls.cli.training import resolve_build_config

    path = tmp_path / "c.yaml"
    path.write_text("teacher_pretrained: true\ndistill:\n  cache_teacher: true\n")
    args = build_parser().parse_args(
        ["distill", "--config", str(path), "--no-teacher-pretrained", "--no-cache-teacher"]
    )
    config = resolve_build_config(args)
    assert config.teacher_pretrained is False and config.distill.cache_teacher is False
    kept = resolve_build_config(build_parser().parse_args(["distill", "--config", str(path)]))
    assert kept.teacher_pretrained is True and kept.distill.cache_teacher is True


def test_a_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"student: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not readable UTF-8"):
        read_config_file(path)
