"""What preprocess's survivors of the automatic mutation run showed untested: the constructor's defaults, which the
python-api guide documents (``jpeg_draft`` off: pixels bit-identical to HF's preprocessing unless asked)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hostile import PROCESSOR
from PIL import Image

from fastvit_detect.preprocess import PreprocessConfig, Preprocessor


def test_a_preprocessor_made_directly_decodes_large_jpegs_in_full_unless_drafting_is_asked():
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    photo = buffer.getvalue()  # large enough for libjpeg to draft at 1/4 scale
    config = PreprocessConfig.from_hf(PROCESSOR)
    default = Preprocessor(config)
    assert default.draft_size is None
    full = Preprocessor(config, jpeg_draft=False).to_pixels(io.BytesIO(photo))
    drafted = Preprocessor(config, jpeg_draft=True).to_pixels(io.BytesIO(photo))
    assert not np.array_equal(full, drafted)  # drafting changes pixels: the comparison below can tell
    assert np.array_equal(default.to_pixels(io.BytesIO(photo)), full)


PROCESSOR_CLASSES = ["ViTImageProcessor", "ViTFeatureExtractor", "DeiTImageProcessor", "DeiTFeatureExtractor"]


def hf_defaults(name: str):
    """What transformers' processor class does with a config naming only its class: its own defaults."""
    import warnings

    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the FeatureExtractor names are deprecated aliases
        processor = getattr(transformers, name)()
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
    return ((processor.size["height"], processor.size["width"]), int(processor.resample),
            (crop["height"], crop["width"]) if crop else None, processor.rescale_factor,
            tuple(processor.image_mean), tuple(processor.image_std))


@pytest.mark.parametrize("name", PROCESSOR_CLASSES)
def test_a_config_that_names_only_its_processor_gets_that_processors_defaults(name):
    """A config lists only what differs from its class's defaults, so the defaults are the class's own: read here
    from transformers' classes, the processors this runtime reproduces."""
    config = PreprocessConfig.from_hf({"image_processor_type": name})
    ours = (config.resize, config.resample, config.crop, config.rescale_factor, config.mean, config.std)
    assert ours == hf_defaults(name)


# The model-package guide's ranges for a preprocessor config's values (each end accepted, just past it refused).
RANGES = [("rescale_factor", 1e-6, 1.0), ("image_mean", -1000.0, 1000.0), ("image_std", 0.001, 1000.0)]


@pytest.mark.parametrize(("key", "low", "high"), RANGES)
def test_each_end_of_a_config_values_range_is_accepted_and_just_past_it_refused(key, low, high):
    from fastvit_detect.errors import UnsupportedPreprocessorError

    def resolved(value):
        config = PreprocessConfig.from_hf({**PROCESSOR, key: value})
        return config.rescale_factor if key == "rescale_factor" else getattr(config, key.split("_")[1])

    for value in (low, high):
        assert resolved(value) in (value, (value,) * 3)
    for value in (low - abs(low) * 1e-6, high + abs(high) * 1e-6):
        with pytest.raises(UnsupportedPreprocessorError, match=f"{key}=.* must be a finite number from {low:g} to "
                                                               f"{high:g}"):
            resolved(value)


@pytest.mark.parametrize("key", ["size", "crop_size"])
def test_a_model_input_side_may_be_1_to_1024_pixels(key):
    from fastvit_detect.errors import UnsupportedPreprocessorError

    deit = {"image_processor_type": "DeiTImageProcessor", "do_center_crop": True}
    for side in (1, 1024):
        config = PreprocessConfig.from_hf({**deit, key: {"height": side, "width": side}})
        assert (config.resize if key == "size" else config.crop) == (side, side)
    for side in (0, 1025):
        with pytest.raises(UnsupportedPreprocessorError, match=f"{key}=.*each from 1 to 1024"):
            PreprocessConfig.from_hf({**deit, key: side})


def test_a_preprocessors_config_and_steps_cannot_be_changed_once_built():
    """A Preprocessor is shared by every thread of a detector, and the processor families by every package: its
    config, its resize and crop steps and the families are frozen values."""
    import dataclasses

    from fastvit_detect.preprocess import PROCESSOR_FAMILIES

    config = PreprocessConfig.from_hf({"image_processor_type": "DeiTImageProcessor"})
    steps = Preprocessor(config).transforms
    assert [type(step).__name__ for step in steps] == ["Resize", "CenterCrop"]
    for value, field in [*((step, "height") for step in steps), (config, "resize"),
                         (PROCESSOR_FAMILIES["DeiTImageProcessor"], "center_crop")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


def test_normalisation_takes_both_mean_and_std_or_neither():
    """A PreprocessConfig built by hand (it is public) with a mean but no std normalises nothing, as a config with
    do_normalize off: the table is the rescaled pixels, not an error halfway through a batch."""
    import numpy as np

    from fastvit_detect.preprocess import normalization_table

    half = PreprocessConfig(resize=(224, 224), resample=2, crop=None, rescale_factor=1 / 255, mean=(0.5,) * 3,
                            std=None, processor="ViTImageProcessor")
    rescaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    np.testing.assert_array_equal(normalization_table(half), np.stack([rescaled] * 3))
