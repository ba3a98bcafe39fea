"""The Detector against PyTorch, end to end: image file -> logits and labels."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import sample_photos, torch_logits

from fastvit_detect import Detector, ImageDecodeError, InputError, Prediction
from fastvit_detect.package import MANIFEST_FILE

PACKAGE_KINDS = ["vit", "deit", "legacy-vit", "deit-arch"]


@pytest.mark.parametrize("kind", PACKAGE_KINDS)
def test_fp32_logits_equal_pytorch_on_real_photos_and_odd_images(kind, packages, checkpoints, odd_images):
    images = sample_photos() + list(odd_images.values())
    expected = torch_logits(checkpoints[kind], images)
    detector = Detector.load(packages[kind], variant="fp32")
    actual = np.stack([p.logits for p in detector.predict_batch(images, batch_size=5)])
    assert np.abs(actual - expected).max() <= 1e-4
    assert (actual.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_int8_stays_close_to_pytorch(kind, packages, checkpoints):
    images = sample_photos()
    expected = torch_logits(checkpoints[kind], images)
    detector = Detector.load(packages[kind], variant="int8")
    probabilities = np.stack([[p.probabilities[label] for label in detector.labels]
                              for p in detector.predict_batch(images)])
    reference = np.exp(expected) / np.exp(expected).sum(1, keepdims=True)
    # Random tiny weights make a poor accuracy test (issue 3 measures trained models); this bounds the drift.
    assert np.abs(probabilities - reference).max() < 0.05


def test_auto_prefers_int8_and_variants_are_selectable(vit_package):
    assert Detector.load(vit_package).variant.name == "int8"
    assert Detector.load(vit_package, variant="fp32").variant.name == "fp32"


def test_prediction_fields_are_consistent(vit_package):
    prediction = Detector.load(vit_package).predict(sample_photos()[0])
    assert prediction == prediction and prediction != Detector.load(vit_package).predict(sample_photos()[0])
    assert len({prediction}) == 1  # hashable, compared by identity: logits arrays have no truth value
    assert isinstance(prediction, Prediction)
    assert set(prediction.probabilities) == {"Fake", "Real"}
    assert prediction.score == max(prediction.probabilities.values())
    assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    assert prediction.fake_probability == prediction.probabilities["Fake"]
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-9
    assert prediction.logits.shape == (2,)
    json.dumps(prediction.to_dict())  # serialisable as is


def test_fake_probability_follows_the_label_not_the_index(packages):
    # The DeiT package has id2label {0: Real, 1: Fake}, the ViT one {0: Fake, 1: Real}.
    detector = Detector.load(packages["deit"])
    assert detector.labels == ["Real", "Fake"]
    prediction = detector.predict(sample_photos()[1])
    assert prediction.fake_probability == pytest.approx(prediction.probabilities["Fake"])
    assert prediction.fake_probability == pytest.approx(1 - prediction.probabilities["Real"])


def test_batch_keeps_order_and_equals_single_predictions(vit_package):
    images = sample_photos()
    detector = Detector.load(vit_package, variant="fp32")
    singles = [detector.predict(image).logits for image in images]
    for batch_size in (1, 3, len(images) + 5):
        batched = [p.logits for p in detector.predict_batch(images, batch_size=batch_size)]
        np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_batch_accepts_any_iterable(vit_package):
    detector = Detector.load(vit_package)
    results = detector.predict_batch(iter(sample_photos()[:3]), batch_size=2)
    assert len(results) == 3


def test_bad_image_in_batch_raises_or_is_returned_in_place(vit_package, bad_inputs):
    images = [sample_photos()[0], bad_inputs["text.jpg"], sample_photos()[1]]
    # fp32: dynamic int8 scales activations over the whole batch, so its logits depend on the batch's other images.
    detector = Detector.load(vit_package, variant="fp32")
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        detector.predict_batch(images)
    results = detector.predict_batch(images, errors="return")
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    assert isinstance(results[1], ImageDecodeError) and results[1].source == str(bad_inputs["text.jpg"])
    np.testing.assert_allclose(results[2].logits, detector.predict(images[2]).logits, atol=1e-5)


def test_batch_of_only_bad_images(vit_package, bad_inputs):
    results = Detector.load(vit_package).predict_batch(list(bad_inputs.values()), errors="return")
    assert all(isinstance(result, InputError) for result in results)


@pytest.mark.parametrize("argument, value", [("batch_size", 0), ("errors", "ignore")])
def test_invalid_batch_arguments(vit_package, argument, value):
    with pytest.raises(ValueError, match=argument):
        Detector.load(vit_package).predict_batch(sample_photos()[:1], **{argument: value})


@pytest.mark.parametrize("argument, value", [("batch_size", 0), ("prefetch", -1)])
def test_predict_iter_refuses_bad_arguments_at_the_call(vit_package, argument, value):
    with pytest.raises(ValueError, match=argument):
        Detector.load(vit_package).predict_iter(sample_photos()[:1], **{argument: value})  # no next() needed


def test_shared_between_threads(vit_package):
    images = sample_photos() * 3
    detector = Detector.load(vit_package)
    sequential = [detector.predict(image).logits for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda image: detector.predict(image).logits, images))
    np.testing.assert_allclose(concurrent, sequential, atol=1e-5)


def test_threads_option_reaches_the_session(vit_package):
    assert Detector.load(vit_package, threads=1).session.threads == 1


def test_optimum_export_without_manifest_loads(vit_package, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(vit_package, plain)
    (plain / MANIFEST_FILE).unlink()
    detector = Detector.load(plain)
    assert detector.variant.name == "int8" and detector.variant.sha256 is None
    reference = Detector.load(vit_package).predict(sample_photos()[0])
    np.testing.assert_array_equal(detector.predict(sample_photos()[0]).logits, reference.logits)


def test_optimum_opens_our_package(vit_package):
    optimum = pytest.importorskip("optimum.onnxruntime")
    from transformers import AutoImageProcessor
    from transformers.image_utils import load_image

    photo = sample_photos()[0]
    model = optimum.ORTModelForImageClassification.from_pretrained(vit_package, file_name="model.onnx")
    processor = AutoImageProcessor.from_pretrained(vit_package, use_fast=False)
    logits = model(**processor(load_image(str(photo)), return_tensors="pt")).logits.numpy()[0]
    ours = Detector.load(vit_package, variant="fp32").predict(photo).logits
    np.testing.assert_allclose(ours, logits, atol=1e-5)


def test_jpeg_draft_decodes_large_jpegs_at_reduced_scale(vit_package, odd_images):
    from fastvit_detect import load_image

    large = odd_images["large.jpg"]  # 2000x1500
    assert load_image(large).size == (2000, 1500)
    assert load_image(large, draft_size=(224, 224)).size == (500, 375)  # 1/4: the smallest still >= 224x224
    # Stored 90x120 and turned by EXIF: the draft must cover the requested size after the turn, not before.
    width, height = load_image(odd_images["exif-rotated.jpg"], draft_size=(20, 60)).size
    assert width >= 20 and height >= 60
    exact = Detector.load(vit_package, variant="fp32").predict(large)
    fast = Detector.load(vit_package, variant="fp32", jpeg_draft=True).predict(large)
    assert fast.label == exact.label and abs(fast.score - exact.score) < 0.05
    png = odd_images["wide.png"]  # not a JPEG: drafting doesn't apply, results are identical
    np.testing.assert_array_equal(Detector.load(vit_package, variant="fp32", jpeg_draft=True).predict(png).logits,
                                  Detector.load(vit_package, variant="fp32").predict(png).logits)


def test_physical_cores_count_smt_siblings_once_and_only_allowed_processors(monkeypatch):
    from fastvit_detect import session

    blocks = tuple({"processor": str(n), "physical id": "0", "core id": str(n // 2), "flags": "fpu avx2"}
                   for n in range(4))  # 2 cores x 2 hyper-threads
    monkeypatch.setattr(session, "cpuinfo", lambda: blocks)
    monkeypatch.setattr(session.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    assert session.physical_core_count() == 2
    monkeypatch.setattr(session.os, "sched_getaffinity", lambda _pid: {2})  # pinned to one logical CPU
    assert session.physical_core_count() == 1
    assert session.cpu_flags() == frozenset({"fpu", "avx2"})
    monkeypatch.setattr(session, "cpuinfo", lambda: ())  # no /proc/cpuinfo: trust the affinity mask
    monkeypatch.setattr(session.os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert session.physical_core_count() == 3 and session.cpu_flags() == frozenset()
