"""The Detector against PyTorch, end to end: image file -> logits and labels."""

from __future__ import annotations

import json
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import FIXTURE_MODELS, revouch_configs, sample_photos

from fastvit_detect import (
    Detector,
    EmptyImageError,
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    IncompatibleModelError,
    Prediction,
)
from fastvit_detect.package import MANIFEST_FILE

PACKAGE_KINDS = sorted(FIXTURE_MODELS)
PROBABILITY_TOLERANCE = 1e-5  # fp32 ONNX against PyTorch: logits within 1e-4, probabilities far closer


def fake_index(labels) -> int:
    return [label.lower() for label in labels].index("fake")


@pytest.mark.parametrize("kind", PACKAGE_KINDS)
def test_fp32_equals_pytorch_on_real_photos_and_odd_images(kind, packages, reference, odd_images):
    images = sample_photos() + list(odd_images.values())
    expected = reference.logits(kind, images)
    detector = Detector.load(packages[kind], variant="fp32")
    predictions = detector.predict_batch(images, batch_size=5)
    actual = np.stack([p.logits for p in predictions])
    assert np.abs(actual - expected).max() <= 1e-4
    # The verdicts, not just the logits: labels by name, the probabilities and p(fake) under each name.
    assert [p.label for p in predictions] == reference.labels(kind, images)
    probabilities = reference.probabilities(kind, images)
    labels = FIXTURE_MODELS[kind].labels
    for prediction, row in zip(predictions, probabilities):
        assert prediction.probabilities == pytest.approx(dict(zip(labels, row)), abs=PROBABILITY_TOLERANCE)
        assert prediction.score == pytest.approx(row.max(), abs=PROBABILITY_TOLERANCE)
        assert prediction.fake_probability == pytest.approx(row[fake_index(labels)], abs=PROBABILITY_TOLERANCE)


@pytest.mark.parametrize("kind", ["vit", "deit", "multi"])
def test_int8_stays_close_to_pytorch(kind, packages, reference):
    images = sample_photos()
    detector = Detector.load(packages[kind], variant="int8")
    predictions = detector.predict_batch(images)
    probabilities = np.stack([[p.probabilities[label] for label in detector.labels] for p in predictions])
    # Drift bounded; the fixture models' margins keep every label (tests/test_fixtures.py checks all images).
    assert np.abs(probabilities - reference.probabilities(kind, images)).max() < 0.05
    assert [p.label for p in predictions] == reference.labels(kind, images)


def test_auto_prefers_int8_and_variants_are_selectable(vit_package):
    assert Detector.load(vit_package).variant.name == "int8"
    assert Detector.load(vit_package, variant="fp32").variant.name == "fp32"
    assert Detector.load(vit_package, variant="int8").variant.name == "int8"


@pytest.mark.parametrize("recommended", ["fp32", "int8"])
def test_auto_follows_the_manifests_default_variant(package_copy, recommended):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    (package_copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "default_variant": recommended}))
    assert Detector.load(package_copy).variant.name == recommended
    assert Detector.load(package_copy, variant="auto").variant.path.name == manifest["variants"][recommended]["file"]


def test_auto_without_a_recommendation_prefers_int8(package_copy):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    del manifest["default_variant"]
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert Detector.load(package_copy).variant.name == "int8"
    del manifest["variants"]["int8"]  # only fp32 left: auto takes it
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert Detector.load(package_copy).variant.name == "fp32"


def test_cpu_requirement_policy(package_copy, monkeypatch):
    """A variant that needs VNNI: refused on a CPU without it (auto falls back), trusted where flags can't be read."""
    import fastvit_detect.choice as detector_module  # where the variant choice reads the CPU's flags

    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    manifest["variants"]["int8"]["quantization"]["requires_cpu_flags_any"] = ["avx512_vnni", "avx_vnni"]
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    for flags in (frozenset(), frozenset({"avx2", "avx_vnni"})):  # unreadable (not Linux), or a VNNI CPU
        monkeypatch.setattr(detector_module, "cpu_flags", lambda flags=flags: flags)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning either
            assert Detector.load(package_copy).variant.name == "int8"
            assert Detector.load(package_copy, variant="int8").variant.name == "int8"
    monkeypatch.setattr(detector_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(IncompatibleModelError, match="needs a CPU with avx512_vnni or avx_vnni"):
        Detector.load(package_copy, variant="int8")
    with pytest.warns(RuntimeWarning, match="using variant 'fp32' instead"):
        assert Detector.load(package_copy).variant.name == "fp32"
    assert Detector.load(package_copy, variant="fp32").variant.name == "fp32"


def test_prediction_fields_are_consistent(vit_package, reference):
    prediction = Detector.load(vit_package).predict(sample_photos()[0])
    assert prediction.label == reference.label("vit", sample_photos()[0])
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


@pytest.mark.parametrize("kind", ["deit", "multi"])
def test_labels_and_fake_probability_follow_the_names_not_the_index(kind, packages, reference):
    # id2label {0: Real, 1: Fake} and {0: Real, 1: Unsure, 2: Fake}: neither is in sorted order.
    detector = Detector.load(packages[kind], variant="fp32")
    assert detector.labels == list(FIXTURE_MODELS[kind].labels)
    photos = sample_photos()
    predictions = detector.predict_batch(photos)
    expected = reference.probabilities(kind, photos)
    assert [p.label for p in predictions] == reference.labels(kind, photos)
    assert [p.fake_probability for p in predictions] == pytest.approx(expected[:, fake_index(detector.labels)],
                                                                      abs=PROBABILITY_TOLERANCE)
    for prediction in predictions:
        assert prediction.fake_probability == prediction.probabilities["Fake"]


@pytest.mark.parametrize("labels, fake", [(["Fake", "Real"], 0), (["Real", "Fake"], 1), (["real", " FAKE "], 1),
                                         (["Real", "Unsure", "Fake"], 2), (["cat", "dog"], None)])
def test_fake_label_is_found_by_name_whatever_its_case(labels, fake):
    from fastvit_detect.detector import fake_label_index

    assert fake_label_index(labels)[0] == fake


@pytest.mark.parametrize("labels, fake_column", [(["Synthetic", "Real"], 0), (["Cat", "Dog"], None)])
def test_fake_probability_without_a_fake_label(package_copy, reference, labels, fake_column):
    """Two labels, one named "real": p(fake) is 1 - p(real); neither name: no p(fake)."""
    config = json.loads((package_copy / "config.json").read_text())
    config["id2label"] = dict(enumerate(labels))
    (package_copy / "config.json").write_text(json.dumps(config))
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())  # it repeats the labels: must agree
    (package_copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "labels": labels}))
    revouch_configs(package_copy)
    photos = sample_photos()
    predictions = Detector.load(package_copy, variant="fp32").predict_batch(photos)
    expected = reference.probabilities("vit", photos)  # the same model: only the names changed
    assert [p.label for p in predictions] == [labels[i] for i in expected.argmax(1)]
    if fake_column is None:
        assert all(p.fake_probability is None for p in predictions)
    else:
        assert [p.fake_probability for p in predictions] == pytest.approx(expected[:, fake_column],
                                                                          abs=PROBABILITY_TOLERANCE)


def test_batch_keeps_order_and_equals_single_predictions(vit_package, reference):
    images = sample_photos()
    detector = Detector.load(vit_package, variant="fp32")
    singles = [detector.predict(image).logits for image in images]
    for batch_size in (1, 3, len(images) + 5):
        batched = detector.predict_batch(images, batch_size=batch_size)
        np.testing.assert_allclose([p.logits for p in batched], singles, atol=1e-5)
        assert [p.label for p in batched] == reference.labels("vit", images)


def test_batch_accepts_any_iterable(vit_package, reference):
    detector = Detector.load(vit_package)
    results = detector.predict_batch(iter(sample_photos()[:3]), batch_size=2)
    assert [result.label for result in results] == reference.labels("vit", sample_photos()[:3])


def test_bad_image_in_batch_raises_or_is_returned_in_place(vit_package, bad_inputs, reference):
    images = [sample_photos()[0], bad_inputs["text.jpg"], sample_photos()[1]]
    # fp32: dynamic int8 scales activations over the whole batch, so its logits depend on the batch's other images.
    detector = Detector.load(vit_package, variant="fp32")
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        detector.predict_batch(images)
    results = detector.predict_batch(images, errors="return")
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    assert isinstance(results[1], ImageDecodeError) and results[1].source == str(bad_inputs["text.jpg"])
    np.testing.assert_allclose(results[2].logits, detector.predict(images[2]).logits, atol=1e-5)
    assert [results[0].label, results[2].label] == reference.labels("vit", [images[0], images[2]])


def test_batch_of_only_bad_images(vit_package, bad_inputs):
    results = Detector.load(vit_package).predict_batch(list(bad_inputs.values()), batch_size=4, errors="return")
    expected = {"empty.jpg": EmptyImageError, "truncated.jpg": ImageDecodeError, "truncated.png": ImageDecodeError,
                "text.jpg": ImageDecodeError, "bomb.png": ImageTooLargeError, "a-directory.png": ImageNotFoundError}
    assert [type(result) for result in results] == [expected[name] for name in bad_inputs]
    assert [result.source for result in results] == [str(path) for path in bad_inputs.values()]


@pytest.mark.parametrize("argument, value", [("batch_size", 0), ("errors", "ignore")])
def test_invalid_batch_arguments(vit_package, argument, value):
    with pytest.raises(ValueError, match=argument):
        Detector.load(vit_package).predict_batch(sample_photos()[:1], **{argument: value})


@pytest.mark.parametrize("argument, value", [("batch_size", 0), ("prefetch", -1)])
def test_predict_iter_refuses_bad_arguments_at_the_call(vit_package, argument, value):
    with pytest.raises(ValueError, match=argument):
        Detector.load(vit_package).predict_iter(sample_photos()[:1], **{argument: value})  # no next() needed


def test_shared_between_threads(vit_package, reference):
    images = sample_photos() * 3
    detector = Detector.load(vit_package)
    sequential = [detector.predict(image).logits for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(detector.predict, images))
    np.testing.assert_allclose([p.logits for p in concurrent], sequential, atol=1e-5)
    assert [p.label for p in concurrent] == reference.labels("vit", images)


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


def test_jpeg_draft_decodes_large_jpegs_at_reduced_scale(vit_package, odd_images, reference):
    from fastvit_detect import load_image

    large = odd_images["large.jpg"]  # 2000x1500
    assert load_image(large).size == (2000, 1500)
    assert load_image(large, draft_size=(224, 224)).size == (500, 375)  # 1/4: the smallest still >= 224x224
    # Stored 90x120 and turned by EXIF: the draft must cover the requested size after the turn, not before.
    width, height = load_image(odd_images["exif-rotated.jpg"], draft_size=(20, 60)).size
    assert width >= 20 and height >= 60
    exact = Detector.load(vit_package, variant="fp32").predict(large)
    fast = Detector.load(vit_package, variant="fp32", jpeg_draft=True).predict(large)
    assert fast.label == exact.label == reference.label("vit", large) and abs(fast.score - exact.score) < 0.05
    assert not np.array_equal(fast.logits, exact.logits)  # drafting took effect: other pixels, other logits
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
