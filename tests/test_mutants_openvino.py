"""Mutation survivors of openvino_session.py: what a user sees of the OpenVINO session.

Expected values come from outside the code under test: the installed OpenVINO's version from its distribution
metadata (``importlib.metadata``), the precision from the ``ov_config`` the test passes (docs/guides/backends.md:
``ov_config`` passes OpenVINO properties through; the session reports the precision OpenVINO computes in).
"""

from __future__ import annotations

from importlib import metadata

import pytest
from hostile import colour

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import fastvit_detect as fd

KIND = "vit-openvino"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVIT_DETECT_CACHE", str(tmp_path / "cache"))


def test_the_detectors_providers_and_repr_name_the_installed_openvino_version(packages):
    detector = fd.Detector.load(packages[KIND], variant="openvino-int8")
    version = metadata.version("openvino")  # e.g. 2026.4.1; OpenVINO's own string adds the build after it
    assert detector.session.providers[0].startswith(f"OpenVINO {version}")
    assert f"providers=['OpenVINO {version}" in repr(detector)


def test_the_session_reports_the_precision_openvino_computes_in(packages):
    precision = "f32"  # every CPU computes f32; bf16 only where the CPU has it
    detector = fd.Detector.load(packages[KIND], variant="openvino-int8",
                                ov_config={"INFERENCE_PRECISION_HINT": precision})
    assert detector.session.inference_precision == precision
    assert detector.predict(colour((9, 9, 9))).label in detector.labels
