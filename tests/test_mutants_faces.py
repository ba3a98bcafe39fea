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
