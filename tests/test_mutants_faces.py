"""Mutation survivors of faces.py: the documented bounds of FaceOptions and MTCNN's box rule.

Expected values come from the docs and the MTCNN rule, not from the code under test: docs/guides/faces.md gives
``min_face_size`` 12-10,000 px (12: P-net's 12 px window, facenet-pytorch's ``pnet`` cell), and ``_sane``'s
docstring says a box keeps a side of *at most* ``MAX_BOX_FACTOR`` (2) times the image's longer side.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastvit_detect.errors import InvalidOptionError
from fastvit_detect.faces import FaceOptions, _sane


@pytest.mark.parametrize("size", [12, 10_000])
def test_min_face_size_takes_both_documented_ends(size):
    assert FaceOptions(min_face_size=size).min_face_size == size


@pytest.mark.parametrize("size", [11, 10_001])
def test_min_face_size_refuses_just_past_either_end(size):
    with pytest.raises(InvalidOptionError, match="min_face_size"):
        FaceOptions(min_face_size=size)


def test_a_box_exactly_twice_the_longer_side_is_kept_and_one_past_it_dropped():
    # a 10 x 10 image: a side may be at most 20 px
    boxes = np.array([[0, 0, 5, 20, 0.9], [0, 0, 20, 5, 0.9], [0, 0, 5, 20.5, 0.9], [0, 0, 20.5, 5, 0.9]],
                     np.float32)
    kept = _sane(boxes, 10, 10)
    assert kept.tolist() == boxes[:2].tolist()


class _OneConfidentWindow:
    """A stand-in P-net (it counts its calls): every window scores 0.7 with an x offset of 0.1, except the last
    window of the level, which scores 0.95 with no offset. Output size as P-net's: (side - 12) // 2 + 1."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        rows, columns = (pixels.shape[2] - 12) // 2 + 1, (pixels.shape[3] - 12) // 2 + 1
        regression = np.zeros((1, 4, rows, columns), np.float32)
        regression[0, 0] = 0.1
        regression[0, 0, -1, -1] = 0.0
        probabilities = np.zeros((1, 2, rows, columns), np.float32)
        probabilities[0, 1] = 0.7
        probabilities[0, 1, -1, -1] = 0.95
        probabilities[0, 0] = 1 - probabilities[0, 1]
        return [regression, probabilities]


def test_the_per_level_cap_keeps_the_most_confident_windows():
    """MAX_PROPOSALS: "P-net windows per pyramid level and overall, the most confident kept". A 16 x 9000 image at
    min_face_size 12 is one pyramid level (16 * 0.709 < 12) of 17 x 9001 px: 3 x 4495 windows, over the cap of
    4096; the one confident window, last in order, must survive it. Its box is MTCNN's generateBoundingBox rule at
    scale 1: ((2 * 4494 + 1), (2 * 2 + 1)) to ((2 * 4494 + 12), (2 * 2 + 12)), already square."""
    from fastvit_detect.faces import AreaSampler, FaceDetector

    pnet = _OneConfidentWindow()
    detector = FaceDetector(pnet, None, None)  # type: ignore[arg-type]  # stage 1 alone
    pixels = np.full((16, 9000, 3), 128, np.uint8)
    boxes = detector._propose(pixels, AreaSampler(pixels), 12)
    assert pnet.calls == 1
    best = boxes[np.argmax(boxes[:, 4])]
    assert best[4] == pytest.approx(0.95)
    assert best[:4].tolist() == [8989, 5, 9000, 16]
