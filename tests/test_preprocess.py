"""Preprocessing parity: our numpy + Pillow pipeline against transformers' slow image processors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    BRIGHT,
    DEIT_PROCESSOR,
    LEGACY_DEIT_PROCESSOR,
    LEGACY_VIT_PROCESSOR,
    VIT_PROCESSOR,
    noise_image,
    sample_photos,
)
from PIL import Image

from fastvit_detect import (
    ImageTooLargeError,
    Preprocessor,
    UnsupportedInputError,
    UnsupportedPreprocessorError,
    load_image,
)
from fastvit_detect.preprocess import PreprocessConfig

PROCESSOR_CONFIGS = {
    "vit": VIT_PROCESSOR,
    "deit": DEIT_PROCESSOR,
    "legacy-vit": LEGACY_VIT_PROCESSOR,
    "legacy-deit": LEGACY_DEIT_PROCESSOR,
    # Crop larger than the resize: HF zero-pads; so must we.
    "deit-padded-crop": {**DEIT_PROCESSOR, "size": {"height": 200, "width": 180}},
    "vit-nearest-nonsquare": {**VIT_PROCESSOR, "size": {"height": 160, "width": 240}, "resample": 0},
    "vit-lanczos": {**VIT_PROCESSOR, "resample": 1},
    "vit-box-no-normalize": {**VIT_PROCESSOR, "resample": 4, "do_normalize": False},
    "vit-hamming-no-rescale": {**VIT_PROCESSOR, "resample": 5, "do_rescale": False},
    # Configs naming only their class: every option from the class's defaults (DeiT's mean/std are 0.5, not
    # ImageNet's, which DeiT checkpoints' configs carry explicitly).
    "vit-class-defaults": {"image_processor_type": "ViTImageProcessor"},
    "deit-class-defaults": {"image_processor_type": "DeiTImageProcessor"},
}


def hf_processor(config: dict, tmp_path: Path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    transformers = pytest.importorskip("transformers")  # here, not at import: the other tests run without it
    return transformers.AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)


def hf_pixels(processor, images) -> np.ndarray:
    from transformers.image_utils import load_image as hf_load_image

    pictures = [hf_load_image(str(image) if isinstance(image, Path) else image) for image in images]
    return processor(pictures, return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("name", sorted(PROCESSOR_CONFIGS))
def test_bit_identical_to_hf_slow_processor_on_real_photos(name, tmp_path):
    config = PROCESSOR_CONFIGS[name]
    images = sample_photos()
    expected = hf_pixels(hf_processor(config, tmp_path), images)
    actual = Preprocessor.from_hf(config)(images)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_bit_identical_to_hf_on_odd_modes_and_shapes(name, odd_images, tmp_path):
    config = PROCESSOR_CONFIGS[name]
    images = list(odd_images.values())
    expected = hf_pixels(hf_processor(config, tmp_path), images)
    actual = Preprocessor.from_hf(config)(images)
    for index, path in enumerate(images):
        np.testing.assert_array_equal(actual[index], expected[index], err_msg=path.name)


def test_exif_orientation_is_applied(odd_images):
    upright = load_image(odd_images["exif-rotated.jpg"])
    assert upright.size == (120, 90)  # stored 90 wide x 120 high, orientation 6 turns it


def test_animated_gif_uses_first_frame(odd_images):
    first = Image.open(odd_images["animated.gif"]).convert("RGB")
    np.testing.assert_array_equal(np.asarray(load_image(odd_images["animated.gif"])), np.asarray(first))


def test_animated_webp_uses_first_frame(odd_images):
    # Lossless WebP: the first frame decodes to exactly the array it was made from (a bright one; the others
    # are dark, so the fixture models' verdict on the file tells the frames apart too).
    first, second = (noise_image(40, 60, 11, level=BRIGHT), noise_image(40, 60, 12))
    decoded = np.asarray(load_image(odd_images["animated.webp"]))
    np.testing.assert_array_equal(decoded, first)
    assert not np.array_equal(decoded, second)
    assert Image.open(odd_images["animated.webp"]).n_frames == 3


def test_every_input_kind_gives_the_same_pixels(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    data = path.read_bytes()
    preprocessor = Preprocessor.from_hf(VIT_PROCESSOR)
    inputs = [path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data), Image.open(path), array]
    batch = preprocessor(inputs)
    for index in range(1, len(inputs)):
        np.testing.assert_array_equal(batch[index], batch[0], err_msg=f"input kind {type(inputs[index]).__name__}")


def test_grayscale_array_equals_grayscale_image():
    gray = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    preprocessor = Preprocessor.from_hf(VIT_PROCESSOR)
    batch = preprocessor([gray, Image.fromarray(gray, mode="L")])
    np.testing.assert_array_equal(batch[0], batch[1])


@pytest.mark.parametrize(
    "array, cause",
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
        (np.zeros((10, 10, 4), dtype=np.uint8), "HxWx3"),
        (np.zeros((2, 10, 10, 3), dtype=np.uint8), "HxWx3"),
    ],
)
def test_unsupported_arrays_are_refused_with_the_cause(array, cause):
    with pytest.raises(UnsupportedInputError, match=cause) as info:
        load_image(array)
    assert "ndarray" in str(info.value)


def test_unsupported_input_type_is_refused():
    with pytest.raises(UnsupportedInputError, match="unsupported input type int"):
        load_image(42)  # type: ignore[arg-type]


def test_text_mode_file_object_is_refused(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("hello")
    with open(path, encoding="utf-8") as handle, pytest.raises(UnsupportedInputError, match="binary mode"):
        load_image(handle)  # type: ignore[arg-type]
    # A real image opened in text mode fails while reading, not after: still the same typed error.
    image = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(image)
    with open(image, encoding="utf-8") as handle, pytest.raises(UnsupportedInputError, match="binary mode"):
        load_image(handle)  # type: ignore[arg-type]


def test_closed_pil_image_and_oversized_array_are_typed_errors():
    closed = Image.new("RGB", (4, 4))
    closed.close()
    with pytest.raises(UnsupportedInputError, match="unusable PIL image"):
        load_image(closed)
    with pytest.raises(ImageTooLargeError, match="40,000 pixels exceeds the cap of 100"):
        load_image(np.zeros((200, 200, 3), np.uint8), max_pixels=100)


def test_callers_pil_image_is_left_untouched(odd_images):
    original = Image.open(odd_images["exif-rotated.jpg"])
    original.load()
    before = (original.size, original.getexif().get(0x0112))
    assert load_image(original).size == (120, 90)
    assert (original.size, original.getexif().get(0x0112)) == before == ((90, 120), 6)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"image_processor_type": "CLIPImageProcessor"}, "CLIPImageProcessor"),
        ({}, "names no image_processor_type"),
        ({**VIT_PROCESSOR, "size": {"shortest_edge": 224}}, "shortest_edge"),
        ({**VIT_PROCESSOR, "resample": 9}, "resample"),
        ({**VIT_PROCESSOR, "image_mean": [0.5, 0.5]}, "image_mean"),
        ({**VIT_PROCESSOR, "resample": "bilinear"}, "resample"),
        ({**VIT_PROCESSOR, "rescale_factor": "1/255"}, "rescale_factor"),
        ({**VIT_PROCESSOR, "image_std": "abc"}, "image_std"),
        ({**VIT_PROCESSOR, "size": {"height": "224", "width": 224}}, "size"),
        ({"image_processor_type": ["ViTImageProcessor"]}, "isn't reproduced"),
    ],
)
def test_unsupported_preprocessor_configs_are_refused(config, message):
    with pytest.raises(UnsupportedPreprocessorError, match=message):
        PreprocessConfig.from_hf(config)


def test_null_options_fall_back_to_processor_defaults():
    config = PreprocessConfig.from_hf({"image_processor_type": "DeiTImageProcessor", "size": None, "crop_size": None})
    assert config.resize == (256, 256) and config.crop == (224, 224) and config.resample == 3


def test_vit_ignores_crop_keys_as_hf_does():
    config = PreprocessConfig.from_hf({**VIT_PROCESSOR, "do_center_crop": True, "crop_size": 100})
    assert config.crop is None and config.output_size == (224, 224)
