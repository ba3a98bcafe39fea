"""What detector's survivors of the automatic mutation run showed untested: when ``Detector.load`` looks for a
cached layout calibration. A calibration is keyed by the graph's sha256 from the manifest, so a package without
one (Optimum's layout) has nothing to key on and must not read one; an explicit layout needs none."""

from __future__ import annotations

import pytest
from hostile import write_package

import fastvit_detect.detector as detector_module
from fastvit_detect import Detector
from fastvit_detect.layout import cache_path


@pytest.fixture
def lookups(monkeypatch):
    """The cache files ``Detector.load`` asks for a calibration, in order (none is there: the answer is None)."""
    asked = []
    monkeypatch.setattr(detector_module, "read_calibration", lambda path, cores: asked.append(path))
    return asked


def test_a_package_without_a_manifest_reads_no_cached_calibration(lookups, tmp_path):
    detector = Detector.load(write_package(tmp_path / "optimum-layout"), threads=1)
    assert detector.variant.sha256 is None
    assert lookups == []


def test_a_manifest_package_reads_the_calibration_of_its_graph_unless_a_layout_is_given(lookups, vit_package):
    detector = Detector.load(vit_package, variant="fp32", threads=1)
    assert lookups == [cache_path(detector.variant.sha256)]
    for explicit in ({"workers": 1}, {"threads_per_worker": 1}, {"workers": 1, "threads_per_worker": 1}):
        Detector.load(vit_package, variant="fp32", threads=1, **explicit)
        assert len(lookups) == 1, explicit
