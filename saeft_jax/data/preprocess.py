"""Image preprocessing as a checkpoint's `ImageSpec` says: the OpenAI/torchvision evaluation
transform (or SigLIP's squash), the training transform (RandomResizedCrop) and their constants.

`clip_eval` reproduces `Resize(size, BICUBIC) -> CenterCrop(size) -> ToTensor -> Normalize` on
PIL images, including torchvision's rounding of the resized long side (truncated) and of the
crop offsets (rounded half to even, as Python's `round`), which moves published accuracies.
`clip_train` is torchvision's `RandomResizedCrop(size, scale, bicubic)` (its sampling
algorithm, drawn from a given NumPy generator) + the same normalization.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


RESIZES = (
    "crop",
    "squash",
)  # crop: short side to `size`, then the centre square (CLIP); squash: to size x size (SigLIP)
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
_PIL_CODES = {3: "bicubic", 2: "bilinear"}  # transformers' `resample` values


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """The input a checkpoint expects: square side in pixels, per-channel mean and std, how an
    image becomes a square (`resize`: "crop" or "squash") and the resampling filter."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resize: str = "crop"
    interpolation: str = "bicubic"

    def __post_init__(self):
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}; got {self.resize!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}; got {self.interpolation!r}")

    @classmethod
    def from_hf_processor(cls, processor: dict[str, Any]) -> ImageSpec:
        """From the contents of a `preprocessor_config.json`, with its processor's defaults where it
        says nothing: CLIP's (`CLIPImageProcessor`: a centre crop, OpenAI's mean and std) or SigLIP's
        (`SiglipImageProcessor`: a resize to height x width, mean and std 0.5); the filter."""
        siglip = str(processor.get("image_processor_type", "")).startswith("Siglip")
        crops = processor.get("do_center_crop", not siglip)
        crop = processor.get("crop_size", processor.get("size", 224)) if crops else processor.get("size", 224)
        size = crop if isinstance(crop, int) else crop.get("height", crop.get("shortest_edge"))
        if not crops and isinstance(crop, dict) and crop.get("width", size) != size:
            raise ValueError(f"size {crop} is not square; the models here take square images")
        resample = _PIL_CODES.get(processor.get("resample", 3))
        if resample is None:
            raise ValueError(f"resample {processor.get('resample')!r} is not supported; known: {_PIL_CODES}")
        mean, std = ((0.5,) * 3, (0.5,) * 3) if siglip else (OPENAI_MEAN, OPENAI_STD)
        return cls(
            int(size),
            tuple(processor.get("image_mean", mean)),
            tuple(processor.get("image_std", std)),
            "crop" if crops else "squash",
            resample,
        )

    def hf_processor_config(self) -> dict[str, Any]:
        """The `preprocessor_config.json` of a transformers image processor doing this transform
        (`CLIPImageProcessor` for a crop, `SiglipImageProcessor` for a squash)."""
        resample = {v: k for k, v in _PIL_CODES.items()}[self.interpolation]
        common = {
            "do_resize": True,
            "resample": resample,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }
        if self.resize == "squash":
            return {
                "image_processor_type": "SiglipImageProcessor",
                **common,
                "size": {"height": self.size, "width": self.size},
            }
        return {
            "image_processor_type": "CLIPImageProcessor",
            **common,
            "size": {"shortest_edge": self.size},
            "do_center_crop": True,
            "crop_size": {"height": self.size, "width": self.size},
        }


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.uint8).squeeze()).convert("RGB")


def _normalize(pil: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    pixels = np.asarray(pil, np.float32) / 255.0
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def clip_eval(
    image: np.ndarray,
    size: int,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
    resize: str = "crop",
    interpolation: str = "bicubic",
) -> np.ndarray:
    """uint8 HWC (or HW) image of any size -> float32 (size, size, 3), normalized: CLIP's resize
    and centre crop, or (`resize="squash"`) a resize to size x size as SigLIP's processor does."""
    pil = _pil(image)
    if resize == "squash":
        return _normalize(pil.resize((size, size), _RESAMPLE[interpolation]), mean, std)
    width, height = pil.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    pil = pil.resize((size, new_long) if width <= height else (new_long, size), _RESAMPLE[interpolation])
    top = int(round((pil.height - size) / 2.0))
    left = int(round((pil.width - size) / 2.0))
    return _normalize(pil.crop((left, top, left + size, top + size)), mean, std)


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) as torchvision's `RandomResizedCrop.get_params` draws
    them: up to 10 tries of area fraction and log-uniform aspect ratio, then a centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def clip_train(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
    scale: tuple[float, float] = (0.9, 1.0),
    interpolation: str = "bicubic",
) -> np.ndarray:
    """uint8 HWC image -> float32 (size, size, 3): a random crop (area fraction in `scale`) resized
    to `size` (bicubic unless told), normalized. The same generator state gives the same crop."""
    pil = _pil(image)
    top, left, h, w = random_resized_crop_box(pil.height, pil.width, rng, scale)
    crop = pil.crop((left, top, left + w, top + h))
    return _normalize(crop.resize((size, size), _RESAMPLE[interpolation]), mean, std)


def border_cropped(image: np.ndarray, border: int) -> np.ndarray:
    """The image without `border` pixels on each side (ObjectNet's frame)."""
    return image[border : image.shape[0] - border, border : image.shape[1] - border] if border else image


def _eval(image: np.ndarray, spec: ImageSpec, border: int) -> np.ndarray:
    return clip_eval(border_cropped(image, border), spec.size, spec.mean, spec.std, spec.resize, spec.interpolation)


def _train(image: np.ndarray, rng: np.random.Generator, spec: ImageSpec, scale: tuple[float, float]) -> np.ndarray:
    return clip_train(image, rng, spec.size, spec.mean, spec.std, scale, spec.interpolation)


def eval_transform(spec: ImageSpec, border_crop: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """`image -> clip_eval(image)` for `spec` (after a border crop); picklable, for grain workers."""
    return functools.partial(_eval, spec=spec, border=border_crop)


def train_transform(spec: ImageSpec, scale: tuple[float, float] | None = (0.9, 1.0)) -> Callable:
    """`(image, rng) -> model input` for training: `clip_train` with `scale`, or, when `scale` is
    None, the deterministic `clip_eval` (then the teacher cache is exact)."""
    if scale is None:
        return functools.partial(_eval_ignoring_rng, spec=spec)
    return functools.partial(_train, spec=spec, scale=tuple(scale))


def _eval_ignoring_rng(image: np.ndarray, rng: np.random.Generator, spec: ImageSpec) -> np.ndarray:
    return _eval(image, spec, 0)
