"""CLIP image preprocessing: the OpenAI/torchvision evaluation transform and its constants.

`clip_eval` reproduces `Resize(size, BICUBIC) -> CenterCrop(size) -> ToTensor -> Normalize` on
PIL images, including torchvision's rounding of the resized long side (truncated) and of the
crop offsets (rounded half to even, as Python's `round`), which moves published accuracies.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """The input a checkpoint expects: square side in pixels and per-channel mean and std."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    @classmethod
    def from_hf_processor(cls, processor: dict[str, Any]) -> "ImageSpec":
        """From the contents of a `preprocessor_config.json` (crop size, image mean and std)."""
        crop = processor.get("crop_size", processor.get("size", 224))
        size = crop if isinstance(crop, int) else crop.get("height", crop.get("shortest_edge"))
        return cls(int(size), tuple(processor.get("image_mean", OPENAI_MEAN)),
                   tuple(processor.get("image_std", OPENAI_STD)))

    def hf_processor_config(self) -> dict[str, Any]:
        """The `preprocessor_config.json` of a `transformers.CLIPImageProcessor` doing this transform."""
        return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "resample": 3,
                "size": {"shortest_edge": self.size}, "do_center_crop": True,
                "crop_size": {"height": self.size, "width": self.size}, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(self.mean),
                "image_std": list(self.std), "do_convert_rgb": True}


def clip_eval(image: np.ndarray, size: int, mean: tuple[float, ...] = OPENAI_MEAN,
              std: tuple[float, ...] = OPENAI_STD) -> np.ndarray:
    """uint8 HWC (or HW) image of any size -> float32 (size, size, 3), CLIP-normalized."""
    pil = Image.fromarray(np.asarray(image, np.uint8).squeeze()).convert("RGB")
    width, height = pil.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    pil = pil.resize((size, new_long) if width <= height else (new_long, size), Image.BICUBIC)
    top = int(round((pil.height - size) / 2.0))
    left = int(round((pil.width - size) / 2.0))
    pixels = np.asarray(pil, np.float32)[top:top + size, left:left + size] / 255.0
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
