import pytest
import torch

from edge_cls.errors import CheckpointError, ConfigError
from edge_cls.training.checkpoints import Checkpoint
from edge_cls.training.models import ModelRecipe, create_model, load_weights, spec_for_model


def test_conv_stem_vit_is_registered_with_timm():
    import timm

    model = timm.create_model("vit_convstem_tiny", num_classes=10)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    spec = spec_for_model(model)
    assert spec.input_size == (64, 64) and spec.mean == (0.5, 0.5, 0.5)


def test_conv_stem_vit_keeps_the_state_dict_layout_of_earlier_checkpoints():
    """Checkpoints written when the model was built with timm's private hybrid-ViT helper must load:
    same keys, same shapes, same order (the digest was taken from that implementation)."""
    import hashlib

    import timm

    state = timm.create_model("vit_convstem_tiny", num_classes=10).state_dict()
    layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    assert len(state) == 100
    expected = "8053f4da0b8b78cd9e0cc8ea58920786d5b53ae2b95d6bde49073261d4af5dff"
    assert hashlib.sha256(layout.encode()).hexdigest() == expected


def test_unknown_model_names_close_ones():
    with pytest.raises(ConfigError, match="unknown timm model 'mobilenetv9'"):
        create_model(ModelRecipe(name="mobilenetv9", num_classes=2))


def test_spec_follows_pretrained_cfg_and_size():
    model = create_model(ModelRecipe(name="test_efficientnet", num_classes=3))
    spec = spec_for_model(model, input_size=48)
    assert spec.input_size == (48, 48) and spec.interpolation == "bicubic" and spec.crop_pct == 0.95


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_weights_round_trip(tmp_path, suffix):
    source = create_model(ModelRecipe(name="test_efficientnet", num_classes=3))
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = create_model(ModelRecipe(name="test_efficientnet", num_classes=3), weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])


def test_weights_that_do_not_fit_name_keys_and_shapes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(create_model(ModelRecipe(name="test_efficientnet", num_classes=3)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"classifier.weight: file \(3, .*\) vs model \(5, "):
        create_model(ModelRecipe(name="test_efficientnet", num_classes=5), weights=path)
    with pytest.raises(CheckpointError, match="keys missing"):
        load_weights(create_model(ModelRecipe(name="test_vit", num_classes=3)), path)


def test_unreadable_weights_and_checkpoints(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_weights(create_model(ModelRecipe(name="test_efficientnet", num_classes=3)), bad)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.load(tmp_path / "none.pt")


def test_checkpoint_round_trip_and_truncation(tmp_path, tiny_checkpoint):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    model = checkpoint.build()
    assert not model.training and checkpoint.labels == [str(i) for i in range(10)]
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        Checkpoint.load(truncated)


def test_checkpoint_save_is_atomic(tmp_path, tiny_checkpoint, monkeypatch):
    checkpoint = Checkpoint.load(tiny_checkpoint)
    path = tmp_path / "c.pt"
    checkpoint.save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        checkpoint.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
