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
    detector = Detector.load(faces_package, variant="fp32")
    for wrong in ("skip", np.arange(3), None):
        with pytest.raises(InvalidOptionError, match="no_face"):
            detector.predict_faces(b"", no_face=wrong)
        with pytest.raises(InvalidOptionError, match="no_face"):
            detector.predict_faces_iter([b""], no_face=wrong)


def test_cli_faces_flags_contradicting_are_refused(faces_package, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    assert cli_main(["predict", "--model", str(faces_package), "--faces", "--no-faces", str(image)]) != 0
    assert "contradict" in capsys.readouterr().err


# --- 2. scan --faces: a record per face, then the image's; resumable -------------------------------------------------


@pytest.fixture(scope="module")
def photo_folder(scene, tmp_path_factory) -> Path:
    """A group photo, a face, a photo without one, and a file that isn't an image."""
    folder = tmp_path_factory.mktemp("photos")
    scene.save(folder / "a-group.png")
    _photo("astronaut.png").save(folder / "b-astronaut.png")
    _photo("coffee.png").save(folder / "c-coffee.png")
    (folder / "d-broken.png").write_bytes(b"not an image")
    return folder


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _expected_records(detector: Detector, folder: Path) -> list[dict]:
    from fastvit_detect.scan import faces_records

    records = []
    for path in sorted(folder.iterdir()):
        try:
            result = detector.predict_faces(path)
        except InputError as exc:
            result = exc
        records.extend(json.loads(json.dumps(faces_records(str(path), result))))
    return records


def _close(a: dict, b: dict) -> bool:
    """Records equal, their numbers within float noise (crops batched with other images' crops)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        if isinstance(a[key], float):
            if abs(a[key] - b[key]) > 1e-4:
                return False
        elif isinstance(a[key], dict):
            if not _close(a[key], b[key]):
                return False
        elif isinstance(a[key], list) and a[key] and isinstance(a[key][0], float):
            if not np.allclose(a[key], b[key], atol=1e-3):
                return False
        elif a[key] != b[key] and key != "error":
            return False
    return True


def test_scan_with_faces_writes_a_record_per_face_then_the_images(expecting, photo_folder, tmp_path):
    from fastvit_detect.scan import scan

    output = tmp_path / "results.jsonl"
    summary = scan(expecting, photo_folder, output, batch_size=3)
    records = _jsonl(output)
    expected = _expected_records(expecting, photo_folder)
    assert len(records) == len(expected) and all(_close(a, b) for a, b in zip(records, expected))
    kinds = [(Path(record["image"]).name, record.get("face"), record.get("decided_by")) for record in records]
    assert kinds == [*(("a-group.png", number, None) for number in range(1, len(COMPOSITION) + 1)),
                     ("a-group.png", None, "face"), ("b-astronaut.png", 1, None), ("b-astronaut.png", None, "face"),
                     ("c-coffee.png", None, "whole-image"), ("d-broken.png", None, None)]
    assert records[len(COMPOSITION)]["face_count"] == len(COMPOSITION) and len(records[0]["box"]) == 4
    assert "error" in records[-1]
    assert (summary.classified, summary.failed, summary.faces) == (3, 1, len(COMPOSITION) + 1)
    assert "classified (6 face(s))" in summary.describe()
    again = scan(expecting, photo_folder, output)  # resumed: every image done, faces don't count as images
    assert again.already_done == 4 and again.classified == 0 and len(_jsonl(output)) == len(records)
    # Resumed without faces, or a scan without faces resumed with them: refused, the file left whole.
    from fastvit_detect import FastVitDetectError

    before = output.read_bytes()
    with pytest.raises(FastVitDetectError, match="a record of a scan with faces"):
        scan(Detector.load(expecting.package, variant="fp32", faces=False), photo_folder, output)
    assert output.read_bytes() == before
    plain = tmp_path / "plain.jsonl"
    scan(Detector.load(expecting.package, variant="fp32", faces=False), photo_folder, plain)
    with pytest.raises(FastVitDetectError, match="a record of a scan without faces"):
        scan(expecting, photo_folder, plain)


def test_scan_with_faces_to_csv_and_its_cap(faces_package, photo_folder, tmp_path):
    import csv

    from fastvit_detect.scan import scan

    capped = Detector.load(faces_package, variant="fp32", faces=True, face_options=FaceOptions(max_faces=2))
    output = tmp_path / "results.csv"
    scan(capped, photo_folder, output)
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    group = [row for row in rows if row["image"].endswith("a-group.png")]
    assert [row["face"] for row in group] == ["1", "2", ""]  # max_faces caps the records
    assert group[-1]["decided_by"] == "face" and group[-1]["face_count"] == "2"
    assert all(float(row["box_x1"]) > float(row["box_x0"]) and row["label"] for row in group[:2])
    coffee = next(row for row in rows if row["image"].endswith("c-coffee.png"))
    assert coffee["decided_by"] == "whole-image" and coffee["face_count"] == "0" and not coffee["face"]
    # A scan without faces into this file is refused, the file left whole (not cut back to nothing).
    before = output.read_bytes()
    from fastvit_detect import FastVitDetectError

    with pytest.raises(FastVitDetectError, match="columns"):
        scan(Detector.load(faces_package, variant="fp32"), photo_folder, output)
    assert output.read_bytes() == before


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_scan_stopped_inside_an_images_faces_resumes_with_that_image(tmp_path, fmt):
    """Torn at every byte of an image's records (two faces, then the image's): everything of that image is cut and
    it is done again; the image before it is kept."""
    from fastvit_detect.scan import ScanOutput

    good = {"label": "Real", "score": 0.75, "fake_probability": 0.25, "probabilities": {"Fake": 0.25, "Real": 0.75}}

    def face(image: str, number: int) -> dict:
        return {"image": image, "face": number, "box": [1.0, 2.0, 30.5, 40.0], "face_score": 0.99, **good}

    first = [face("a.png", 1), {"image": "a.png", **good, "decided_by": "face", "face_count": 1}]
    second = [face("b.png", 1), face("b.png", 2), {"image": "b.png", **good, "decided_by": "face", "face_count": 2}]
    path = tmp_path / f"results.{fmt}"

    def written(records: list[dict]) -> bytes:
        with ScanOutput(path, ("Fake", "Real"), fmt, overwrite=True, faces=True) as output:
            for record in records:
                output.write_record(record)
        return path.read_bytes()

    before, whole = written(first), written(first + second)
    for cut in range(len(before), len(whole) + 1):
        path.write_bytes(whole[:cut])
        output = ScanOutput(path, ("Fake", "Real"), fmt, faces=True)
        output.close()
        done = {Path(name).name for name in output.done}
        if cut == len(whole):
            assert done == {"a.png", "b.png"} and path.read_bytes() == whole
        else:
            assert done == {"a.png"}, cut
            assert path.read_bytes() == before, cut


def test_cli_scan_faces_and_no_faces(expecting_package, photo_folder, tmp_path):
    output = tmp_path / "faces.jsonl"
    assert cli_main(["scan", str(photo_folder), "--model", str(expecting_package), "--variant", "fp32",
                     "-o", str(output)]) != 0  # the broken file fails; the package expects faces: faces by default
    assert sum("face" in record for record in _jsonl(output)) == len(COMPOSITION) + 1
    plain = tmp_path / "plain.jsonl"
    cli_main(["scan", str(photo_folder), "--model", str(expecting_package), "--no-faces", "-o", str(plain)])
    assert len(_jsonl(plain)) == 4 and not any("face" in record or "decided_by" in record for record in _jsonl(plain))
    capped = tmp_path / "capped.jsonl"
    cli_main(["scan", str(photo_folder), "--model", str(expecting_package), "--max-faces", "1", "-o", str(capped)])
    assert sum("face" in record for record in _jsonl(capped)) == 2


# --- 3. the Ray engine with faces: the local scan's records ---------------------------------------------------------


def _by_image(records: list[dict]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for record in records:
        grouped.setdefault(Path(record["image"]).name, []).append(json.dumps({**record, "image": "-"}))
    return grouped


def test_the_ray_actor_writes_the_local_scans_face_records(faces_package, photo_folder, tmp_path):
    """Without a cluster: the actor's records for a batch, through Arrow and back, are the local scan's, byte for
    byte (same variant, same batching)."""
    pa = pytest.importorskip("pyarrow")
    engine = pytest.importorskip("fastvit_detect.ray")
    from fastvit_detect.scan import scan

    local = tmp_path / "local.jsonl"
    scan(Detector.load(faces_package, variant="fp32", faces=True), photo_folder, local)
    classifier = engine.BatchClassifier(faces_package, variant="fp32", faces=True)
    files = sorted(photo_folder.iterdir())
    batch = pa.table({"path": [str(path) for path in files],
                      "file": pa.array([bytes(path) for path in files], pa.binary())})
    records = [json.dumps(record) for record in engine.table_records(classifier(batch))]
    assert records == local.read_text().splitlines()
    plain = engine.BatchClassifier(faces_package, variant="fp32")  # auto: the package doesn't expect faces
    assert len(list(engine.table_records(plain(batch)))) == len(files)


@pytest.fixture(scope="module")
def local_ray():
    import logging

    ray = pytest.importorskip("ray")
    engine = pytest.importorskip("fastvit_detect.ray")
    try:
        engine.init_local(num_cpus=2, logging_level=logging.WARNING)
    except Exception:  # noqa: BLE001 - Ray gives a raylet 30 s to register: once more on a crowded machine
        ray.shutdown()
        engine.init_local(num_cpus=2, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_ray_scan_with_faces_gives_the_local_scans_records(local_ray, expecting_package, photo_folder, tmp_path,
                                                           capsys):
    import pyarrow.parquet as pq

    import fastvit_detect.ray as engine

    local = tmp_path / "local.jsonl"
    assert cli_main(["scan", str(photo_folder), "--model", str(expecting_package), "--variant", "fp32",
                     "-o", str(local)]) != 0  # the broken image
    want = _by_image(_jsonl(local))
    ray_jsonl = tmp_path / "ray.jsonl"
    assert cli_main(["scan", str(photo_folder), "--model", str(expecting_package), "--variant", "fp32",
                     "--engine", "ray", "--actors", "2", "--batch-size", "2", "-o", str(ray_jsonl)]) != 0
    got = _by_image(_jsonl(ray_jsonl))
    assert got.keys() == want.keys()
    for name in want:  # each image's records in the local scan's order; numbers within batching noise
        assert len(got[name]) == len(want[name])
        assert all(_close(json.loads(a), json.loads(b)) for a, b in zip(got[name], want[name])), name
    assert "classified (6 face(s))" in capsys.readouterr().err
    parquet = tmp_path / "ray.parquet"
    summary = engine.classify(photo_folder, expecting_package, parquet, variant="fp32", actors=1, batch_size=4,
                              face_options=FaceOptions(max_faces=1))
    records = list(engine.table_records(pq.read_table(parquet)))
    assert summary.faces == 2 and sum("face" in record for record in records) == 2
    assert [json.dumps(record) for record in records if record["image"].endswith("c-coffee.png")] == [
        json.dumps({**json.loads(want["c-coffee.png"][0]), "image": str(photo_folder / "c-coffee.png")})]
    again = engine.classify(photo_folder, expecting_package, parquet, variant="fp32")  # resumed: all done
    assert again.already_done == 4 and again.classified == 0
    shipped = tmp_path / "shipped.jsonl"  # the package's files through the object store, face graphs included
    engine.classify(photo_folder, expecting_package, shipped, variant="fp32", actors=1, ship_model=True)
    got = _by_image(_jsonl(shipped))
    assert got.keys() == want.keys() and sum("face" in record for record in _jsonl(shipped)) == len(COMPOSITION) + 1


def test_ray_records_of_a_batch_that_arrives_twice_are_written_once(local_ray, faces_package, photo_folder, tmp_path):
    import pyarrow as pa

    import fastvit_detect.ray as engine

    class Twice(engine.BatchClassifier):
        def __call__(self, batch):
            table = super().__call__(batch)
            return pa.concat_tables([table, table])

    once, twice = tmp_path / "once.jsonl", tmp_path / "twice.jsonl"
    options = dict(variant="fp32", actors=1, batch_size=4, faces=True)
    engine.classify(photo_folder, faces_package, once, **options)
    summary = engine.classify(photo_folder, faces_package, twice, classifier=Twice, **options)
    assert once.read_text() == twice.read_text()
    assert summary.duplicates_dropped == len(once.read_text().splitlines()) and summary.classified == 3


# --- 5. fine-tuning crops faces with the runtime's code ------------------------------------------------------------


@pytest.fixture(scope="module")
def finetune():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_train_data import load_train_script

    return load_train_script("finetune")


def test_finetune_trains_on_the_crop_predict_faces_classifies(finetune, faces_package, scene, tmp_path):
    from fastvit_detect.faces import face_crop

    group = tmp_path / "group.png"
    scene.save(group)
    detector = Detector.load(faces_package, variant="fp32")
    result = detector.predict_faces(group)
    face = result.faces[0][0]  # the most confident face
    want = detector.preprocessor.to_pixels(face_crop(scene, face, 0.3))
    crops = finetune.FaceCrops(faces_package)
    trained_on = crops(group)
    np.testing.assert_array_equal(trained_on, want)
    assert _same(detector.predict(trained_on), result.faces[0][1])
    wider = finetune.FaceCrops(faces_package, margin=0.8)(group)
    assert not np.array_equal(wider, trained_on)
    np.testing.assert_array_equal(wider, detector.preprocessor.to_pixels(face_crop(scene, face, 0.8)))
    coffee = tmp_path / "coffee.png"
    _photo("coffee.png").save(coffee)
    np.testing.assert_array_equal(crops(coffee), finetune.load_resized(coffee))  # no face: the whole image
    assert crops.faceless == {coffee}


def test_finetune_with_faces_end_to_end(finetune, faces_package, tmp_path):
    """The flag reaches the loader: a few steps on a small data set with faces pasted into some images."""
    from test_train_data import TINY_SMOKE_ARGUMENTS

    astronaut = _photo("astronaut.png")
    for split in ("Train", "Validation", "Test"):
        for label, shade in (("Real", 90), ("Fake", 160)):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for index in range(3):
                picture = Image.new("RGB", (160, 120), (shade, shade, shade))
                if index:
                    picture.paste(astronaut.crop((150, 30, 300, 210)).resize((60, 72)), (40 * index, 20))
                picture.save(folder / f"{index}.png")
    output = tmp_path / "checkpoint"
    assert finetune.main(["--data", str(tmp_path / "data"), "--output", str(output), "--faces", str(faces_package),
                          *TINY_SMOKE_ARGUMENTS]) == 0
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["faces"]["margin"] == 0.3 and summary["faces"]["images_without_a_face"] == 6
    with pytest.raises(SystemExit):
        finetune.parse_args(["--data", str(tmp_path / "data"), "--base", "tiny", "--output", "x", "--faces",
                             str(tmp_path / "absent")])


def test_finetune_faces_of_a_package_without_a_face_detector_is_a_clear_error(finetune, vit_package, tmp_path,
                                                                              capsys):
    from test_train_data import TINY_SMOKE_ARGUMENTS

    for split in ("Train", "Validation", "Test"):
        for label in ("Real", "Fake"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / "data" / split / label / "a.png")
    assert finetune.main(["--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--faces",
                          str(vit_package), *TINY_SMOKE_ARGUMENTS]) == 2
    assert "face_pnet.onnx" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --- 4. explain on a face ---------------------------------------------------------------------------------------------


def test_explain_the_deciding_face_in_the_crops_coordinates(faces_package, expecting, scene):
    from fastvit_detect.faces import face_crop

    detector = Detector.load(faces_package, variant="fp32")
    result = detector.predict_faces(scene)
    deciding = result.faces[result.decisive][0]
    explanation = detector.explain(scene, face="decisive", grid=2)
    assert explanation.face == deciding and explanation.model_passes == 5
    crop = face_crop(scene, deciding, 0.3)
    # the crop predict_faces classified is what was explained, and crop_box places it on the photo
    np.testing.assert_array_equal(explanation.pixels, detector.preprocessor.to_pixels(crop))
    np.testing.assert_array_equal(np.asarray(explanation.image), crop)
    np.testing.assert_array_equal(np.asarray(scene.crop(explanation.crop_box)), crop)
    assert explanation.original_heatmap.shape == crop.shape[:2]
    assert explanation.prediction.label == result.prediction.label
    summary = json.loads(json.dumps(explanation.summary()))
    assert summary["face"]["crop_box"] == list(explanation.crop_box) and len(summary["face"]["box"]) == 4
    # a detector that decides by faces explains its deciding face unasked; one that doesn't, the whole image
    assert expecting.explain(scene, grid=2).face == deciding
    whole = detector.explain(scene, grid=2)
    assert whole.face is None and whole.image.size == scene.size


def test_explain_a_chosen_face_and_the_refusals(faces_package, scene):
    detector = Detector.load(faces_package, variant="fp32")
    faces = detector.detect_faces(scene)
    assert detector.explain(scene, face=2, grid=2).face == faces[2]
    assert detector.explain(scene, face=faces[1], grid=2).crop_box is not None
    assert detector.explain(scene, face=np.int64(2), grid=2).face == faces[2]
    from fastvit_detect.faces import Face

    for wrong in (len(faces), -1, True, "largest", 1.0, np.arange(3), np.bool_(True), Face((np.nan, 0, 9, 9), 0.9),
                  Face((0, 0, 1e12, 1e12), 0.9)):
        with pytest.raises(InvalidOptionError, match="face"):
            detector.explain(scene, face=wrong, grid=2)
    coffee = _photo("coffee.png")
    no_face = detector.explain(coffee, face="decisive", grid=2)  # the whole image decides: it is explained
    assert no_face.face is None and no_face.image.size == coffee.size


def test_cli_predict_faces_explain_writes_the_deciding_faces_overlay(faces_package, scene, tmp_path, capsys):
    group = tmp_path / "group.png"
    scene.save(group)
    overlays = tmp_path / "overlays"
    assert cli_main(["predict", "--model", str(faces_package), "--variant", "fp32", "--faces", "--json",
                     "--explain", str(overlays), "--grid", "2", str(group)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["faces"]) == len(COMPOSITION) and Path(record["explanation"]).is_file()
    assert cli_main(["explain", "--model", str(faces_package), "--variant", "fp32", "--faces", "-o",
                     str(overlays), "--grid", "2", str(group)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["explanation"]["face"]["crop_box"]) == 4 and record["explanation"]["file"].endswith(".png")


# --- 6. the fuzz campaign through the face stage ---------------------------------------------------------------------

FUZZ_FACES_CASES = 200


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_fuzz_campaign_through_the_face_stage(faces_package, tmp_path):
    """The decoder fuzz campaign (tests/fuzzing.py) with every case through predict_faces, or through the batches of
    a detector that decides by faces, in memory- and time-limited worker processes, plus one case of every hostile
    array, PIL image, object and bomb kind: 0 escapes, hangs, memory overruns, crashes or neighbours failed."""
    import fuzzing

    settings = fuzzing.Settings(cases=FUZZ_FACES_CASES, workers=2, package=str(faces_package), faces=True,
                                extra=tuple(fuzzing.coverage_indices()))
    report = fuzzing.run_campaign(settings, log_dir=tmp_path)
    failed = [result for result in report.results if fuzzing.is_failure(result["outcome"])]
    assert not failed, report.table()
    calls = {result["call"] for result in report.results}
    assert {"predict_faces", "predict_batch", "predict_iter"} <= calls, calls
    through_faces = [result for result in report.results if result["call"] == "predict_faces"]
    assert sum(result["outcome"] == "ok" for result in through_faces) > 20
    assert {"ImageDecodeError", "ImageTooLargeError"} <= {result["outcome"] for result in through_faces}
    assert len(report.results) == len({*range(FUZZ_FACES_CASES), *fuzzing.coverage_indices()})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_photos_of_faces_through_predict_faces(expecting):
    """The campaign's pictures hold no face, so its cases never reach the crops: here its mutations of photos with
    faces (JPEG and PNG), through predict_faces and a faces-first batch: a result or a typed error, never another
    exception, and the crops reached on many."""
    import io
    import random

    import fuzzing

    from fastvit_detect import FastVitDetectError
    from fastvit_detect.detector import FacesResult

    astronaut = _photo("astronaut.png").resize((256, 256))
    seeds = []
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        astronaut.save(buffer, fmt)
        seeds.append(fuzzing.Seed(f"astronaut-{fmt}", fmt, buffer.getvalue()))
    outcomes: dict[str, int] = {}
    with_faces = 0
    for index in range(80):
        seed = seeds[index % 2]
        data, _ = fuzzing.mutate(seed, random.Random(index))
        try:
            result = expecting.predict_faces(data)
            assert isinstance(result, FacesResult)
            with_faces += bool(result.faces)
            outcome = "ok"
        except FastVitDetectError as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if index % 4 == 0:  # and beside a good image in a faces-first batch, which it never fails
            batch = expecting.predict_batch([np.asarray(astronaut), data], errors="return")
            assert batch[0].decided_by == "face"
            assert isinstance(batch[1], FastVitDetectError) or batch[1].decided_by in ("face", "whole-image")
    assert with_faces > 10 and outcomes.get("ImageDecodeError", 0) > 5, (with_faces, outcomes)


# --- from the Hub: the face graphs come with the variant when faces are asked for ------------------------------------


def test_from_pretrained_with_faces_downloads_the_face_detector(faces_package, scene, tmp_path, monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    pytest.importorskip("uvicorn")
    from fakehub import FakeHub

    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True, raising=False)  # the fake Hub speaks LFS
    files = {str(path.relative_to(faces_package)): path.read_bytes()
             for path in faces_package.rglob("*") if path.is_file()}
    with FakeHub() as hub:
        hub.add_commit("deepfakes/vit-faces", files)
        plain = Detector.from_pretrained("deepfakes/vit-faces", variant="fp32", cache_dir=tmp_path / "a",
                                         endpoint=hub.url)
        assert not any(name.startswith("face_") for name in hub.downloads())  # not asked: not fetched
        assert not plain.faces_first
        detector = Detector.from_pretrained("deepfakes/vit-faces", variant="fp32", cache_dir=tmp_path / "b",
                                            endpoint=hub.url, faces=True)
        assert {"face_pnet.onnx", "face_rnet.onnx", "face_onet.onnx"} <= set(hub.downloads())
    assert detector.faces_first and detector.predict(scene).decided_by == "face"


def test_ray_scan_with_faces_of_a_package_without_them_fails_before_ray_starts(vit_package, photo_folder, tmp_path,
                                                                               monkeypatch, capsys):
    engine = pytest.importorskip("fastvit_detect.ray")

    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(engine, "connected", no_ray)
    assert cli_main(["scan", str(photo_folder), "--model", str(vit_package), "--engine", "ray", "--faces",
                     "-o", str(tmp_path / "x.jsonl")]) != 0
    assert "face_pnet.onnx" in capsys.readouterr().err


def test_a_huge_face_crop_is_cut_from_a_reduced_copy_in_every_path(expecting, monkeypatch):
    """A close-up whose crop would be 6,000 px a side (108 MB; a 40 MP photo's with margin 4: 2.7 GB) is cut from a
    copy reduced by a whole factor, to at most MAX_CROP_SIDE px, wherever faces become the classifier's input
    (predict_faces, faces-first batches and scans, fine-tuning); a crop up to that side is face_crop's, exactly."""
    from fastvit_detect import faces as faces_module
    from fastvit_detect.faces import MAX_CROP_SIDE, Face, FaceOptions, face_crop, face_pixels

    picture = Image.new("RGB", (3000, 3000), (120, 100, 90))
    close_up = Face((0.0, 0.0, 3000.0, 3000.0), 0.99)
    small = Face((1000.0, 1000.0, 1100.0, 1120.0), 0.98)

    class Found:
        def detect(self, _picture, _options):
            return [close_up, small]

    sides = []
    cropping = faces_module.face_crop

    def measured(image, face, margin=0.3):
        crop = cropping(image, face, margin)
        sides.append(crop.shape[0])
        return crop

    monkeypatch.setattr(faces_module, "face_crop", measured)
    found, pixels = face_pixels(picture, Found(), FaceOptions(margin=1.0), expecting.preprocessor.to_pixels,
                                expecting.preprocessor.output_size)
    assert found == [close_up, small] and pixels.shape[0] == 2
    assert max(sides) <= MAX_CROP_SIDE and sides[1] == round(2.0 * 120)
    np.testing.assert_array_equal(pixels[1], expecting.preprocessor.to_pixels(face_crop(picture, small, 1.0)))
