"""Explanations: heat where the evidence is, exact mapping back onto the photo, bad input and hostile options.

Where the heat must land is known by construction: ``evidence_package`` is a hand-built ONNX detector whose
p(Fake) grows with the image's fine-texture energy (mean |Laplacian| of the grey image), so a photo-free image,
smooth everywhere except for a noise patch, has all its "fake" evidence in that patch.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DEIT_PROCESSOR, VIT_PROCESSOR, sample_photos
from PIL import Image

from fastvit_detect import Detector, InvalidOptionError, Preprocessor
from fastvit_detect.cli import main
from fastvit_detect.errors import ModelOutputError
from fastvit_detect.explain import Geometry, faithfulness, model_passes

onnx = pytest.importorskip("onnx")

REFERENCE_ENERGY = 0.05  # p(Fake) = energy / (energy + this): 1/2 where the texture energy equals it


def build_evidence_package(directory: Path, processor: dict, int8: bool = False, floor: float = 0.0) -> Path:
    """config.json + preprocessor_config.json + model.onnx (and model_quantized.onnx): Optimum's layout.
    ``floor`` > 0 makes a broken model: its Fake logit is log(energy - floor), NaN below the floor."""
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True)
    laplacian = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32).reshape(1, 1, 3, 3)
    initializers = [numpy_helper.from_array(value, name) for name, value in {
        "laplacian": laplacian,
        "channel": np.array([1], np.int64),
        "spatial": np.array([2, 3], np.int64),
        "epsilon": np.array([1e-6 - floor], np.float32),
        "to_fake": np.array([[1.0, 0.0]], np.float32),
        "real_column": np.array([0.0, math.log(REFERENCE_ENERGY)], np.float32),
    }.items()]
    nodes = [  # logits = [log(energy), log(REFERENCE_ENERGY)]
        helper.make_node("ReduceMean", ["pixel_values", "channel"], ["grey"], keepdims=1),
        helper.make_node("Conv", ["grey", "laplacian"], ["edges"], pads=[1, 1, 1, 1]),
        helper.make_node("Abs", ["edges"], ["magnitude"]),
        helper.make_node("ReduceMean", ["magnitude", "spatial"], ["energy"], keepdims=0),  # (N, 1)
        helper.make_node("Add", ["energy", "epsilon"], ["energy_safe"]),
        helper.make_node("Log", ["energy_safe"], ["fake_logit"]),
        helper.make_node("Mul", ["fake_logit", "to_fake"], ["fake_column"]),  # (N, 2): [log energy, 0]
        helper.make_node("Add", ["fake_column", "real_column"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "evidence",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, directory / "model.onnx")
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(directory / "model.onnx", directory / "model_quantized.onnx", weight_type=QuantType.QUInt8,
                         op_types_to_quantize=["Conv"])
    (directory / "config.json").write_text(json.dumps({"model_type": "vit", "id2label": {"0": "Fake", "1": "Real"},
                                                       "label2id": {"Fake": 0, "Real": 1}}))
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


@pytest.fixture(scope="module")
def evidence_packages(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evidence")
    return {"vit": build_evidence_package(base / "vit", VIT_PROCESSOR, int8=True),
            "deit": build_evidence_package(base / "deit", DEIT_PROCESSOR)}


def smooth_image(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    base = 90 + 60 * (x / width) + 40 * (y / height)
    return np.repeat(base[..., None], 3, axis=2).astype(np.uint8)


def with_noise(pixels: np.ndarray, box: tuple[int, int, int, int], seed: int = 0, tile: int = 3) -> np.ndarray:
    """``pixels`` with a patch of random grey tiles in ``box`` (left, top, right, bottom): the evidence."""
    left, top, right, bottom = box
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 2, (math.ceil((bottom - top) / tile), math.ceil((right - left) / tile))) * 255
    patch = np.kron(tiles, np.ones((tile, tile)))[:bottom - top, :right - left]
    out = pixels.copy()
    out[top:bottom, left:right] = patch[..., None].astype(np.uint8)
    return out


def share_inside(heat: np.ndarray, box: tuple[int, int, int, int]) -> float:
    left, top, right, bottom = box
    positive = np.clip(np.nan_to_num(heat), 0, None)
    return float(positive[top:bottom, left:right].sum() / positive.sum())


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(x, y) of the hottest pixel."""
    y, x = np.unravel_index(int(np.nanargmax(heat)), heat.shape)
    return int(x), int(y)


def inside(point: tuple[int, int], box: tuple[int, int, int, int]) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


# --- heat lands on the evidence -----------------------------------------------------------------------------

QUADRANTS = {"top-left": (0, 0, 112, 112), "bottom-right": (112, 112, 224, 224), "top-right": (112, 0, 224, 112)}


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize(("method", "options"), [("occlusion", {}), ("rise", {"samples": 32})])
def test_heat_concentrates_in_the_quadrant_with_the_evidence(evidence_packages, variant, method, options):
    detector = Detector.load(evidence_packages["vit"], variant=variant, threads=1)
    for name, box in QUADRANTS.items():
        image = with_noise(smooth_image(224, 224), box)
        explanation = detector.explain(image, method=method, **options)
        assert explanation.prediction.label == "Fake", name  # the construction: evidence outweighs the reference
        assert explanation.heatmap.shape == (224, 224) and explanation.heatmap.dtype == np.float32
        assert inside(peak(explanation.heatmap), box), name
        assert share_inside(explanation.heatmap, box) > 0.5, name  # chance: 0.25
        assert explanation.model_passes == model_passes(method, options)


def test_no_evidence_no_heat(evidence_packages):
    detector = Detector.load(evidence_packages["vit"], variant="fp32", threads=1)
    explanation = detector.explain(smooth_image(224, 224), grid=4)
    assert explanation.prediction.label == "Real"
    assert np.abs(explanation.heatmap).max() < 0.01  # nothing to hide: no region moves p(Fake)


@pytest.mark.parametrize("orientation", [1, 6, 8, 3])
def test_heat_lands_on_the_evidence_in_a_rotated_non_square_photo(evidence_packages, tmp_path, orientation):
    # Stored 480 x 300 with the evidence in its top-left corner; viewers turn it by the EXIF orientation.
    stored = with_noise(smooth_image(480, 300), (0, 0, 200, 130), tile=5)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned-{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    # Where the corner is once upright (constructed by hand, not with Pillow's transpose).
    upright_box = {1: (0, 0, 200, 130), 6: (300 - 130, 0, 300, 200), 8: (0, 480 - 200, 130, 480),
                   3: (480 - 200, 300 - 130, 480, 300)}[orientation]
    upright_size = (480, 300) if orientation in (1, 3) else (300, 480)

    explanation = Detector.load(evidence_packages["vit"], variant="fp32", threads=1).explain(path)
    heat = explanation.original_heatmap
    assert heat.shape == (upright_size[1], upright_size[0]) and explanation.image.size == upright_size
    assert inside(peak(heat), upright_box)
    assert share_inside(heat, upright_box) > 0.5
    thumbnail = explanation.heatmap_on_original((upright_size[0] // 4, upright_size[1] // 4))
    assert inside(peak(thumbnail), tuple(side // 4 for side in upright_box))


def test_deit_crop_leaves_the_border_unseen_and_heat_inside(evidence_packages):
    detector = Detector.load(evidence_packages["deit"], threads=1)
    box = (330, 230, 480, 340)  # bottom-right, inside the 224/256 center crop
    explanation = detector.explain(with_noise(smooth_image(512, 384), box, tile=6))
    heat = explanation.original_heatmap
    # The crop keeps model x in [16, 240) of the 256-wide resize: original x in [32, 480) for 512 wide.
    assert np.isnan(heat[:, :32]).all() and np.isnan(heat[:, 480:]).all()
    assert np.isnan(heat[:24]).all() and np.isnan(heat[360:]).all()  # 384 high: [16, 240) * 1.5 = [24, 360)
    assert not np.isnan(heat[24:360, 32:480]).any()
    assert inside(peak(heat), box) and share_inside(heat, box) > 0.5


# --- exact geometry -----------------------------------------------------------------------------------------


GEOMETRY_CASES = {
    "vit non-square": (VIT_PROCESSOR, (400, 300)),
    "vit tall": (VIT_PROCESSOR, (90, 700)),
    "deit crop": (DEIT_PROCESSOR, (500, 375)),
    "deit padded crop": ({**DEIT_PROCESSOR, "size": {"height": 200, "width": 180}}, (333, 222)),
}


@pytest.mark.parametrize("case", GEOMETRY_CASES)
def test_mapping_back_is_exact_for_linear_maps(case):
    # Bilinear sampling reproduces a linear map exactly, so a heat map equal to the model's own x (or y)
    # coordinate must come back as the model coordinate of every original pixel, computed here by hand.
    processor, (width, height) = GEOMETRY_CASES[case]
    preprocessor = Preprocessor.from_hf(processor)
    geometry = Geometry.of(preprocessor.config, (width, height))
    model_height, model_width = preprocessor.output_size
    resized_height, resized_width = preprocessor.config.resize
    crop_height, crop_width = preprocessor.config.crop or (resized_height, resized_width)
    left, top = (resized_width - crop_width) // 2, (resized_height - crop_height) // 2
    columns = np.arange(model_width) + 0.5
    rows = np.arange(model_height) + 0.5
    x_model = (np.arange(width) + 0.5) * resized_width / width - left  # pixel centres in model coordinates
    y_model = (np.arange(height) + 0.5) * resized_height / height - top

    mapped_x = geometry.map_to_original(np.tile(columns, (model_height, 1)).astype(np.float32))
    mapped_y = geometry.map_to_original(np.tile(rows[:, None], (1, model_width)).astype(np.float32))
    seen_x = (x_model >= 0) & (x_model < model_width)
    seen_y = (y_model >= 0) & (y_model < model_height)
    interior_x = seen_x & (x_model >= 0.5) & (x_model <= model_width - 0.5)  # beyond the outer centres: clamped
    interior_y = seen_y & (y_model >= 0.5) & (y_model <= model_height - 0.5)
    assert mapped_x.shape == (height, width)
    np.testing.assert_allclose(mapped_x[np.ix_(seen_y, interior_x)], np.tile(x_model[interior_x], (seen_y.sum(), 1)),
                               atol=1e-4)
    np.testing.assert_allclose(mapped_y[np.ix_(interior_y, seen_x)],
                               np.tile(y_model[interior_y][:, None], (1, seen_x.sum())), atol=1e-4)
    assert np.isnan(mapped_x[~seen_y]).all() and np.isnan(mapped_x[:, ~seen_x]).all()
    assert not np.isnan(mapped_x[np.ix_(seen_y, seen_x)]).any()
    x_back, y_back = geometry.to_original(*geometry.to_model(np.array([3.25, width - 1.0]), np.array([7.5, 2.0])))
    np.testing.assert_allclose(x_back, [3.25, width - 1.0]) and np.testing.assert_allclose(y_back, [7.5, 2.0])


@pytest.mark.parametrize("case", GEOMETRY_CASES)
def test_geometry_matches_what_preprocessing_does(case):
    # A white square on black, through the runtime's real preprocessing: its centroid in the model input must be
    # where the geometry puts the square's centre.
    processor, (width, height) = GEOMETRY_CASES[case]
    preprocessor = Preprocessor.from_hf(processor)
    pixels = np.zeros((height, width, 3), np.uint8)
    left, top = width // 3, height // 2
    size = max(8, min(width, height) // 6)
    pixels[top:top + size, left:left + size] = 255
    model = preprocessor.to_pixels(pixels)[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:model.shape[0], 0:model.shape[1]]
    centroid = ((xs + 0.5) * model).sum() / model.sum(), ((ys + 0.5) * model).sum() / model.sum()
    geometry = Geometry.of(preprocessor.config, (width, height))
    expected = geometry.to_model(left + size / 2, top + size / 2)
    assert centroid == pytest.approx(expected, abs=0.35)


# --- the explanation object, overlays, faithfulness ---------------------------------------------------------


def test_explanation_holds_the_prediction_and_renders(vit_package):
    detector = Detector.load(vit_package, threads=1)
    photo = sample_photos()[0]
    explanation = detector.explain(photo, method="rise", samples=8, target="Real")
    expected = detector.predict(photo)
    assert explanation.prediction.label == expected.label
    assert explanation.prediction.logits.tolist() == expected.logits.tolist()  # alone in its batch, as predict
    assert explanation.target == "Real" and explanation.target_probability == expected.probabilities["Real"]
    width, height = Image.open(photo).size
    assert explanation.original_heatmap.shape == (height, width)
    overlay = explanation.overlay(max_side=300)
    assert overlay.mode == "RGB" and overlay.height == 300 and overlay.width > 300 * width / height + 20
    plain = explanation.overlay(max_side=300, colorbar=False)
    assert plain.size == (round(300 * width / height), 300)
    summary = json.loads(json.dumps(explanation.summary(), allow_nan=False))
    assert summary["model_passes"] == 9 and summary["method"] == "rise" and summary["options"]["samples"] == 8
    grid = explanation.grid(16)
    assert max(len(grid), len(grid[0])) == 16 and all(len(row) == len(grid[0]) for row in grid)


def test_colour_bar_shows_the_scale(evidence_packages):
    detector = Detector.load(evidence_packages["vit"], variant="fp32", threads=1)
    box = (0, 0, 112, 112)
    explanation = detector.explain(with_noise(smooth_image(224, 224), box), grid=4)  # cells end at the quadrant
    overlay = np.asarray(explanation.overlay(max_side=None)).astype(int)
    plain = np.asarray(explanation.overlay(max_side=None, colorbar=False)).astype(int)
    assert overlay.shape[1] > 224 and (overlay[:, :224] == plain).all()
    bar = overlay[:, 224:]
    colours = {tuple(pixel) for pixel in bar.reshape(-1, 3)}
    assert (252, 255, 164) in colours or any(abs(r - 252) + abs(g - 255) + abs(b - 164) < 12 for r, g, b in colours)
    original = smooth_image(224, 224)
    hot, cold = plain[20:90, 20:90], plain[150:210, 150:210]  # heat over the evidence; nothing elsewhere
    assert np.abs(cold - original[150:210, 150:210]).max() <= 2
    assert np.abs(hot - with_noise(original, box)[20:90, 20:90]).mean() > 20


def test_deletion_of_the_heat_beats_random_deletion(evidence_packages):
    detector = Detector.load(evidence_packages["vit"], variant="fp32", threads=1)
    explanation = detector.explain(with_noise(smooth_image(224, 224), (112, 112, 224, 224)))
    for removal in ("blur", "grey"):
        measured = faithfulness(detector, explanation, removal=removal, random_orders=4)
        assert measured.deletion[0] < measured.reference  # hiding the hottest 5 % already lowers p(Fake)
        assert measured.deletion_gap > 0.05 and measured.insertion_gap > 0.05, measured.to_dict()


def test_a_model_that_answers_nan_gives_an_error_never_a_heat_map(evidence_packages, tmp_path, capsys):
    image = with_noise(smooth_image(224, 224), (0, 0, 112, 112))
    sound = Detector.load(evidence_packages["vit"], variant="fp32", threads=1)
    logits = sound.predict(image).logits
    energy = REFERENCE_ENERGY * math.exp(logits[0] - logits[1])  # by construction of the graph
    # Broken just below this image's energy: the image itself gets a verdict, any copy with less texture NaN.
    broken = build_evidence_package(tmp_path / "broken", VIT_PROCESSOR, floor=0.99 * energy)
    detector = Detector.load(broken, threads=1)
    assert np.isfinite(detector.predict(image).logits).all()  # a verdict for the image itself
    with pytest.raises(ModelOutputError, match="non-finite"):
        detector.explain(image)
    path = tmp_path / "evidence.png"
    Image.fromarray(image).save(path)
    assert main(["explain", "--model", str(broken), str(path), "-o", str(tmp_path / "out")]) == 1
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["error"]["type"] == "ModelOutputError" and "explanation" not in record


# --- bad input and hostile options --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "a-directory.png"])
def test_bad_images_raise_the_errors_predict_raises(vit_package, bad_inputs, name):
    detector = Detector.load(vit_package, threads=1)
    with pytest.raises(Exception) as predicted:
        detector.predict(bad_inputs[name])
    with pytest.raises(type(predicted.value)) as explained:
        detector.explain(bad_inputs[name])
    assert str(bad_inputs[name]) in str(explained.value)


HOSTILE_OPTIONS = [
    {"grid": 0}, {"grid": 1}, {"grid": -3}, {"grid": 10**9}, {"grid": float("nan")}, {"grid": float("inf")},
    {"grid": 2.5}, {"grid": 4.0}, {"grid": True}, {"grid": "4"}, {"grid": 1e300}, {"baseline": "black"}, {"samples": 8},
    {"method": "rise", "samples": 0}, {"method": "rise", "samples": 7}, {"method": "rise", "samples": 10**12},
    {"method": "rise", "samples": float("nan")}, {"method": "rise", "seed": -1}, {"method": "gradcam"},
    {"method": None}, {"target": "Deepfake"}, {"target": 3}, {"batch_size": 0}, {"batch_size": float("inf")},
]


@pytest.mark.parametrize("options", HOSTILE_OPTIONS, ids=lambda options: repr(options))
def test_hostile_options_are_typed_errors(vit_package, options):
    detector = Detector.load(vit_package, threads=1)
    with pytest.raises(InvalidOptionError):
        detector.explain(smooth_image(64, 64), **options)


def test_hostile_overlay_options(vit_package):
    explanation = Detector.load(vit_package, threads=1).explain(smooth_image(64, 48), grid=2)
    for options in ({"vmax": float("nan")}, {"vmax": 0}, {"vmax": -1.0}, {"alpha": 0}, {"alpha": float("inf")},
                    {"max_side": 0}, {"max_side": 10**9}):
        with pytest.raises(InvalidOptionError):
            explanation.overlay(**options)
    with pytest.raises(InvalidOptionError):
        explanation.grid(0)
    assert explanation.overlay(vmax=1.0).size[1] == 48  # a small image isn't enlarged


# --- command line -------------------------------------------------------------------------------------------


def test_explain_command_writes_an_overlay_and_a_json_line_per_image(vit_package, bad_inputs, tmp_path, capsys):
    photos = [str(path) for path in sample_photos()[:2]]
    output = tmp_path / "overlays"
    code = main(["explain", "--model", str(vit_package), "--threads", "1", *photos, str(bad_inputs["text.jpg"]),
                 photos[0], "-o", str(output), "--grid", "3"])
    assert code == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["image"] for record in records] == [*photos, str(bad_inputs["text.jpg"]), photos[0]]
    assert records[2]["error"]["type"] == "ImageDecodeError"
    files = [record["explanation"]["file"] for record in records if "explanation" in record]
    assert len(set(files)) == 3 and all(Path(file).parent == output for file in files)  # same name, two files
    detector = Detector.load(vit_package, threads=1)
    for record in (records[0], records[1]):
        assert record["label"] == detector.predict(record["image"]).label
        assert record["explanation"]["options"] == {"baseline": "blur", "grid": 3}
        with Image.open(record["explanation"]["file"]) as overlay:
            assert overlay.format == "PNG" and overlay.height == min(1024, Image.open(record["image"]).height)


def test_predict_explain_writes_overlays_inline(vit_package, tmp_path, capsys):
    photos = [str(path) for path in sample_photos()[:2]]
    assert main(["predict", "--model", str(vit_package), "--threads", "1", "--json", *photos,
                 "--explain", str(tmp_path / "why"), "--method", "rise", "--samples", "4"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(record["explanation"]).name for record in records] == [f"{Path(p).stem}.explain.png" for p in photos]
    assert all(Path(record["explanation"]).is_file() for record in records)


@pytest.mark.parametrize("argv", [
    ["--grid", "nan"], ["--grid", "inf"], ["--grid", "0"], ["--grid", "-1"], ["--grid", "1e300"], ["--grid", "4.5"],
    ["--grid", str(10**30)], ["--samples", "3"], ["--samples", "0"], ["--method", "saliency"], ["--seed", "-2"],
])
def test_hostile_command_line_options_are_usage_errors(vit_package, tmp_path, argv):
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--model", str(vit_package), "x.jpg", "-o", str(tmp_path), *argv])
    assert exit_.value.code == 2


def test_command_line_refusals_print_no_traceback(vit_package, tmp_path):
    photo = str(sample_photos()[0])
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for argv in (["explain", "-o", str(not_a_folder), photo], ["explain", "-o", str(tmp_path), photo, "--samples", "8"],
                 ["predict", photo, "--grid", "4"], ["explain", "-o", str(tmp_path), photo, "--grid", "nan"]):
        result = subprocess.run([sys.executable, "-m", "fastvit_detect", argv[0], "--model", str(vit_package),
                                 *argv[1:]], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, argv
        assert "Traceback" not in result.stderr and "error:" in result.stderr, argv
