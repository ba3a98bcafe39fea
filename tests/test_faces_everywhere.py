"""Faces first, everywhere: Detector.predict / predict_batch / predict_iter deciding by faces for a package that
expects them, scan --faces (local and Ray), explain on a face, and fine-tuning's crops (issue 23)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_faces import COMPOSITION, _photo, _scene

from fastvit_detect import Detector, InputError
from fastvit_detect.cli import main as cli_main
from fastvit_detect.errors import InvalidOptionError, MissingFaceDetectorError
from fastvit_detect.faces import FaceOptions
from fastvit_detect.package import MANIFEST_FILE


@pytest.fixture(scope="module")
def faces_package(packages) -> Path:
    return packages["vit-faces"]


@pytest.fixture(scope="module")
def expecting_package(faces_package, tmp_path_factory) -> Path:
    """The faces package, its manifest saying that the model expects face crops (export --expects-faces)."""
    copy = tmp_path_factory.mktemp("expects") / "package"
    shutil.copytree(faces_package, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["expects_faces"] = True
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def expecting(expecting_package) -> Detector:
    # fp32: a crop's verdict doesn't depend on which crops share its batch (dynamic int8 scales per batch).
    return Detector.load(expecting_package, variant="fp32")


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return _scene(1400, 900, COMPOSITION)[0]


def _same(a, b) -> bool:
    return a.label == b.label and abs(a.score - b.score) < 1e-5


# --- 1. predict, predict_batch and predict_iter decide by faces ----------------------------------------------------


def test_a_package_that_expects_faces_predicts_by_its_faces(expecting, scene):
    assert expecting.faces_first
    faces = expecting.predict_faces(scene)
    prediction = expecting.predict(scene)
    assert _same(prediction, faces.prediction) and prediction.decided_by == "face"
    assert prediction.to_dict()["decided_by"] == "face"
    coffee = _photo("coffee.png")
    whole = expecting.predict(coffee)
    assert whole.decided_by == "whole-image" and _same(whole, expecting.predict_faces(coffee).prediction)


def test_batches_and_streams_decide_by_faces_and_keep_errors_in_place(expecting, scene):
    coffee = _photo("coffee.png")
    images = [scene, b"not an image", coffee]
    expected = [expecting.predict(scene), None, expecting.predict(coffee)]
    for results in (expecting.predict_batch(images, errors="return"),
                    list(expecting.predict_iter(images, batch_size=2, errors="return"))):
        assert isinstance(results[1], InputError)
        for result, wanted in zip(results, expected):
            if wanted is not None:
                assert _same(result, wanted) and result.decided_by == wanted.decided_by
    with pytest.raises(InputError):
        expecting.predict_batch(images)
    with pytest.raises(InputError):
        list(expecting.predict_iter(images))


def test_the_faces_of_a_batch_share_session_calls(expecting, scene, monkeypatch):
    astronaut = _photo("astronaut.png")
    calls = []
    run = expecting.session.run

    def counting(pixels):
        calls.append(len(pixels))
        return run(pixels)

    monkeypatch.setattr(expecting.session, "run", counting)
    expecting.predict_batch([scene, astronaut, astronaut])
    assert calls == [len(COMPOSITION) + 2]  # one call for all the batch's faces, not one per image
    calls.clear()
    expecting.predict_batch([astronaut, scene, astronaut, astronaut], batch_size=4)
    # at most batch_size crops a call, an image's faces never split: [1], [5], [1, 1]
    assert calls == [1, len(COMPOSITION), 2]


def test_faces_can_be_turned_off_or_on(expecting_package, faces_package, scene):
    plain = Detector.load(expecting_package, variant="fp32", faces=False)
    assert not plain.faces_first
    whole = plain.predict(scene)
    assert whole.decided_by is None and "decided_by" not in whole.to_dict()
    not_expecting = Detector.load(faces_package, variant="fp32")
    assert not not_expecting.faces_first and _same(not_expecting.predict(scene), whole)
    forced = Detector.load(faces_package, variant="fp32", faces=True,
                           face_options=FaceOptions(max_faces=2, margin=0.5))
    assert forced.faces_first
    assert _same(forced.predict(scene), forced.predict_faces(scene).prediction)
    assert len(forced.predict_faces(scene).faces) == 2  # the detector's face options are predict_faces' defaults
    assert len(forced.predict_faces(scene, max_faces=3).faces) == 3


def test_faces_arguments_are_checked(vit_package, faces_package):
    with pytest.raises(MissingFaceDetectorError, match="face_pnet.onnx"):
        Detector.load(vit_package, faces=True)  # at load, not at the first image
    assert not Detector.load(vit_package).faces_first  # auto: the package doesn't expect faces
    for wrong in ("yes", 1, None):
        with pytest.raises(InvalidOptionError, match="faces"):
            Detector.load(faces_package, faces=wrong)
    with pytest.raises(InvalidOptionError, match="face_options"):
        Detector.load(faces_package, face_options={"margin": 0.5})


def test_cli_faces_flags_contradicting_are_refused(faces_package, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    assert cli_main(["predict", "--model", str(faces_package), "--faces", "--no-faces", str(image)]) != 0
    assert "contradict" in capsys.readouterr().err
