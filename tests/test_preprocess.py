"""`clip_eval` against known answers of the torchvision evaluation transform."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from saeft_jax.data.preprocess import OPENAI_MEAN, OPENAI_STD, ImageSpec, clip_eval


def photo(height: int, width: int, channels: int = 3) -> np.ndarray:
    rng = np.random.RandomState(height * 1000 + width)
    return rng.randint(0, 256, size=(height, width, channels)[: 3 if channels else 2], dtype=np.uint8)


# (height, width) -> the resized size (w, h) and crop box torchvision computes, worked by hand:
# the long side is int(224 * long / short), the offset round((resized - 224) / 2) (half to even).
CASES = {
    (225, 300): ((298, 224), (37, 0)),  # 298.67 truncated; (298 - 224) / 2 = 37
    (300, 225): ((224, 298), (0, 37)),
    (500, 333): ((224, 336), (0, 56)),  # 336.34 -> 336; 56
    (224, 227): ((227, 224), (2, 0)),  # (227 - 224) / 2 = 1.5 -> 2
    (225, 224): ((224, 225), (0, 0)),  # 0.5 -> 0
    (100, 100): ((224, 224), (0, 0)),  # upsampling
}


@pytest.mark.parametrize("shape", list(CASES))
def test_clip_eval_equals_resize_crop_normalize(shape):
    (size_wh, (left, top)) = CASES[shape]
    image = photo(*shape)
    resized = np.asarray(Image.fromarray(image).resize(size_wh, Image.BICUBIC), np.float32)
    crop = resized[top : top + 224, left : left + 224] / 255.0
    expected = (crop - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32)
    out = clip_eval(image, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_grayscale_is_replicated_to_rgb():
    gray = photo(64, 80, channels=0)
    out = clip_eval(gray, 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert -1.0 <= out.min() and out.max() <= 1.0


def test_image_spec_reads_hf_processor_configs():
    spec = ImageSpec(size=336, mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4))
    assert ImageSpec.from_hf_processor(spec.hf_processor_config()) == spec
    assert ImageSpec.from_hf_processor({"crop_size": 224, "image_mean": list(OPENAI_MEAN)}).size == 224
