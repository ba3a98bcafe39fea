"""A push that lands on the Hub while a pull is under way: every file downloaded belongs to the commit that was
listed, never half of one version and half of the next. The fake Hub (tests/fakehub.py) moves ``main`` to other
weights right after it answers the listing; what was listed is the reference, read from the fake's own log."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import sample_photos

hub_constants = pytest.importorskip("huggingface_hub.constants")  # the hub extra
pytest.importorskip("uvicorn")  # the serve extra runs the fake Hub

from fakehub import FakeHub  # noqa: E402

from fastvit_detect import Detector  # noqa: E402
from fastvit_detect.hub import fetch  # noqa: E402

REPO = "deepfakes/vit-onnx"


@pytest.fixture(autouse=True)
def no_xet(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True, raising=False)


def files_of(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


def logits(detector: Detector) -> np.ndarray:
    return np.stack([p.logits for p in detector.predict_batch(sample_photos()[:3])])


def resolved_revisions(hub: FakeHub) -> set[str]:
    """The revision each file download asked for, from the fake Hub's request log."""
    return {path.split("/resolve/", 1)[1].split("/", 1)[0] for method, path in hub.requests
            if "/resolve/" in path and method in ("GET", "HEAD")}


@pytest.mark.parametrize("revision", [None, "main"])
def test_a_push_landing_mid_pull_changes_nothing_that_was_listed(packages, tmp_path, revision):
    cache = tmp_path / "hf-cache"
    with FakeHub() as hub:
        listed = hub.add_commit(REPO, files_of(packages["vit"]))
        pushed: list[str] = []

        def push_after_listing(answer: dict) -> dict:
            if not pushed:  # the first listing is answered with the old commit; main moves on at once
                pushed.append(hub.add_commit(REPO, files_of(packages["legacy-vit"])))
            return answer

        hub.listing = push_after_listing
        detector = Detector.from_pretrained(REPO, revision=revision, cache_dir=cache, endpoint=hub.url,
                                            variant="fp32")
        assert pushed and pushed[0] != listed  # the push did land, mid-pull
        assert resolved_revisions(hub) == {listed}  # every file of the listed commit
        np.testing.assert_array_equal(logits(detector), logits(Detector.load(packages["vit"], variant="fp32")))
        hub.listing = None
        fetched = fetch(REPO, revision=revision, cache_dir=cache, endpoint=hub.url)
        assert fetched.commit == pushed[0]  # a new pull sees the push
    # Offline, the name resolves to what was downloaded last for it: the pushed commit's metadata, whole.
    offline = fetch(REPO, revision=revision, cache_dir=cache, local_files_only=True)
    assert offline.package.root.name == pushed[0]
