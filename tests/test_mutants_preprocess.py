"""What preprocess's survivors of the automatic mutation run showed untested: the constructor's defaults, which the
python-api guide documents (``jpeg_draft`` off: pixels bit-identical to HF's preprocessing unless asked)."""

from __future__ import annotations

import io

import numpy as np
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
