"""Users who tune onnxruntime themselves hand Detector.load their own SessionOptions and provider options."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import fastvit_detect as fd


def test_session_options_replace_the_defaults(vit_package, tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    options.intra_op_num_threads = 1
    detector = fd.Detector.load(vit_package, variant="fp32", session_options=options)
    reference = fd.Detector.load(vit_package, variant="fp32")
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    np.testing.assert_allclose(detector.predict(image).logits, reference.predict(image).logits, atol=1e-5)
    assert detector.session.threads == 1
    detector.session._session.end_profiling()
    assert list(tmp_path.glob("profile*.json")), "the caller's options weren't the ones used"


def test_threads_still_apply_to_caller_options(vit_package):
    options = ort.SessionOptions()
    detector = fd.Detector.load(vit_package, variant="fp32", session_options=options, threads=1)
    assert detector.session.threads == 1 and options.intra_op_num_threads == 1


def test_provider_options_are_passed_per_provider(vit_package):
    detector = fd.Detector.load(vit_package, variant="fp32", providers=["CPUExecutionProvider"],
                                provider_options=[{}])
    assert detector.session.providers == ["CPUExecutionProvider"]
    with pytest.raises(fd.ProviderError, match="one dict per provider"):
        fd.Detector.load(vit_package, providers=["CPUExecutionProvider"], provider_options=[{}, {}])
