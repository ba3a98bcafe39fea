"""Packages from a careless build machine or a hostile source: every one gets a typed error from Detector.load and
from `info`, never a traceback, never a NaN verdict, never a file read from outside the package."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hostile import CONFIG, PROCESSOR, colour, tiny_graph, write_package

import fastvit_detect as fd
from fastvit_detect.cli import main
from fastvit_detect.package import MANIFEST_FILE, file_sha256


def info_fails_cleanly(package, capsys, cause: str) -> None:
    """`info` on the package exits 2 with the cause and without a traceback."""
    assert main(["info", str(package)]) == 2
    err = capsys.readouterr().err
    assert cause in err and "Traceback" not in err


# --- graphs that don't fit the runtime ----------------------------------------------------------------------


def test_the_hand_built_graph_works(tmp_path):
    """The control: the tiny graph loads and its verdict follows the image's colour, as built."""
    detector = fd.Detector.load(write_package(tmp_path / "good"))
    assert detector.predict(colour((250, 10, 10))).label == "Fake"
    assert detector.predict(colour((10, 10, 250))).label == "Real"


@pytest.mark.parametrize("input_type", ["double", "float16", "uint8"])
def test_graph_with_another_input_type_is_refused(tmp_path, input_type):
    package = write_package(tmp_path / input_type, tiny_graph(input_type=input_type))
    with pytest.raises(fd.IncompatibleModelError, match=r"takes tensor\(.*\); the preprocessing makes tensor\(float\)"):
        fd.Detector.load(package)


def test_graph_with_a_fixed_batch_is_refused(tmp_path):
    package = write_package(tmp_path / "batch1", tiny_graph(batch=1))
    with pytest.raises(fd.IncompatibleModelError, match="batch axis is fixed at 1"):
        fd.Detector.load(package)


def test_nan_logits_are_never_a_verdict(tmp_path):
    detector = fd.Detector.load(write_package(tmp_path / "nan", tiny_graph(nan_output=True)))
    with pytest.raises(fd.ModelOutputError, match="non-finite logits"):
        detector.predict(colour((250, 10, 10)))
    results = detector.predict_batch([colour((250, 10, 10)), b"not an image"], errors="return")
    assert isinstance(results[0], fd.ModelOutputError) and isinstance(results[1], fd.ImageDecodeError)
    assert not any(isinstance(result, fd.Prediction) for result in results)


def test_nan_logits_are_a_500_not_a_verdict_on_the_server(tmp_path):
    httpx = pytest.importorskip("httpx")
    import asyncio

    from fastvit_detect.server import ServeSettings, create_app

    detector = fd.Detector.load(write_package(tmp_path / "nan", tiny_graph(nan_output=True)))
    app = create_app(detector, ServeSettings(max_wait_ms=0))
    png = _png(colour((250, 10, 10)))

    async def ask() -> list:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            import base64
            return [await client.post("/predict/", json={"image": base64.b64encode(png).decode()}),
                    await client.post("/api/v1/predict", content=png)]

    try:
        seed, api = asyncio.run(ask())
    finally:
        app.state.batcher.close()
    for response in (seed, api):
        assert response.status_code == 500 and response.json()["error"]["type"] == "InternalServerError"
        assert "Fake" not in response.text and "Real" not in response.text


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# --- preprocessor configs that would make NaN or gigabytes --------------------------------------------------


@pytest.mark.parametrize("change, cause", [
    ({"image_std": [0, 0.5, 0.5]}, "image_std=0"),
    ({"image_std": [1e-45, 0.5, 0.5]}, "image_std=1e-45"),
    ({"image_mean": [float("nan"), 0.5, 0.5]}, "image_mean=nan"),
    ({"rescale_factor": float("nan")}, "rescale_factor=nan"),
    ({"rescale_factor": 1e308}, "rescale_factor=1e+308"),
    ({"rescale_factor": 10**400}, "rescale_factor="),
    ({"rescale_factor": True}, "rescale_factor=True"),
    ({"image_std": [0.5, 0.5]}, "image_std must be 3 numbers"),
    ({"image_mean": "gray"}, "image_mean must be 3 numbers"),
    ({"size": {"height": 100_000, "width": 100_000}}, "each from 1 to 1024"),
    ({"size": {"height": 0, "width": 32}}, "each from 1 to 1024"),
    ({"size": True}, "size=True"),
    ({"resample": True}, "unknown resample True"),
    ({"do_normalize": "yes"}, "do_normalize='yes' must be true or false"),
])
def test_preprocessor_config_is_validated_when_the_package_opens(tmp_path, capsys, change, cause):
    # JSON can't carry NaN or 10**400 literally in strict mode: written with Python's lenient encoder, the file
    # holds NaN / a huge integer, and the package must refuse it either way.
    package = write_package(tmp_path / "p", processor={**PROCESSOR, **change})
    with pytest.raises(fd.ModelPackageError) as info:
        fd.Detector.load(package)
    assert cause in str(info.value) or "isn't valid JSON" in str(info.value)
    assert main(["predict", "--model", str(package), "x.png"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_graph_size_must_match_the_model_config_when_the_graph_takes_any_size(tmp_path):
    """A dynamic-size graph would run at whatever the config says: the config is held to the model's size."""
    from onnx import TensorProto, helper

    graph = tiny_graph()
    graph.graph.input[0].CopyFrom(
        helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch_size", 3, "height", "width"]))
    processor = {**PROCESSOR, "size": {"height": 1000, "width": 1000}}
    package = write_package(tmp_path / "dynamic", graph, processor=processor)
    with pytest.raises(fd.IncompatibleModelError, match="image_size 32"):
        fd.Detector.load(package)


# --- files outside the package ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.onnx", "config.json", "preprocessor_config.json", MANIFEST_FILE,
                                  "model.onnx_data"])
def test_symlinks_out_of_the_package_are_refused(package_copy, tmp_path, capsys, name):
    outside = tmp_path / "outside" / name
    outside.parent.mkdir()
    shutil.move(package_copy / name, outside)
    (package_copy / name).symlink_to(outside)
    with pytest.raises(fd.InvalidPackageError, match="resolves outside the package"):
        fd.Detector.load(package_copy, variant="fp32", verify=False)
    info_fails_cleanly(package_copy, capsys, "resolves outside the package") if name != "model.onnx_data" else None


def test_symlinks_inside_the_package_are_fine(package_copy):
    (package_copy / "real-config.json").write_bytes((package_copy / "config.json").read_bytes())
    (package_copy / "config.json").unlink()
    (package_copy / "config.json").symlink_to("real-config.json")
    assert fd.Detector.load(package_copy, variant="fp32").labels == ["Fake", "Real"]


def test_graph_naming_unvouched_external_data_is_refused_even_unverified(tmp_path):
    import onnx

    package = tmp_path / "evil"
    package.mkdir()
    secret = tmp_path / "secret.bin"
    onnx.save_model(tiny_graph(external="weights.bin"), str(package / "model.onnx"))
    shutil.move(package / "weights.bin", secret)
    (package / "config.json").write_text(json.dumps(CONFIG))
    (package / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    for location in ("weights.bin", "../secret.bin", str(secret)):
        model = onnx.load(str(package / "model.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(package / "model.onnx"))
        with pytest.raises(fd.InvalidPackageError, match="loads external data from .* which the package doesn't"):
            fd.Detector.load(package, verify=False)


def test_a_second_external_data_file_in_a_manifest_package_is_refused(package_copy):
    """The manifest vouches for model.onnx_data; a graph that also loads extra.bin must not load."""
    import onnx

    graph = package_copy / "model.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    tensor = next(tensor for tensor in model.graph.initializer if tensor.external_data)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = "extra.bin"
    onnx.save_model(model, str(graph))
    shutil.copyfile(package_copy / "model.onnx_data", package_copy / "extra.bin")
    _revouch(package_copy, "fp32")
    with pytest.raises(fd.InvalidPackageError, match="loads external data from 'extra.bin'"):
        fd.Detector.load(package_copy, variant="fp32")


def _revouch(package, variant: str) -> None:
    """Update the manifest's hash of a changed graph, as a careless (or hostile) build step would."""
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    entry = manifest["variants"][variant]
    path = package / entry["file"]
    entry.update(sha256=file_sha256(path), size_bytes=path.stat().st_size)
    (package / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_not_a_regular_file_is_refused(package_copy):
    (package_copy / "config.json").unlink()
    os.mkfifo(package_copy / "config.json")
    with pytest.raises(fd.MissingFileError, match="config.json is missing"):  # a FIFO is no config: nothing blocks
        fd.Detector.load(package_copy)


# --- malformed JSON -----------------------------------------------------------------------------------------


def _edit_manifest(package, change) -> None:
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    change(manifest)
    (package / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize("text, cause", [
    ('{"format": "fastvit-detect-model-package", "format_version": ' + "9" * 5000 + "}", "isn't valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "isn't valid JSON"),
    ('{"a": NaN}', "isn't valid JSON"),
    ("\xff\xfe not utf-8", "isn't valid JSON"),
    ("[]", "must hold a JSON object"),
])
def test_malformed_json_is_an_invalid_package(package_copy, capsys, text, cause):
    (package_copy / MANIFEST_FILE).write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(fd.InvalidPackageError, match=cause):
        fd.Detector.load(package_copy)
    info_fails_cleanly(package_copy, capsys, cause)


def test_oversized_json_is_refused_unread(package_copy, capsys):
    with open(package_copy / "config.json", "w") as handle:
        handle.write('{"pad": "' + "x" * (17 * 1024 * 1024) + '"}')
    with pytest.raises(fd.InvalidPackageError, match="config.json is over 16,777,216 bytes"):
        fd.Detector.load(package_copy)


@pytest.mark.parametrize("change, cause", [
    (lambda m: m.update(source="x"), "source 'x' must be an object"),
    (lambda m: m.update(format_version=True), "format_version True isn't supported"),
    (lambda m: m.update(created=5), "created 5 must be a non-empty string"),
    (lambda m: m.update(labels=None, variants=[]), "variants must list at least one variant"),
    (lambda m: m["variants"]["int8"].update(quantization=[1]), "quantization must be an object"),
    (lambda m: m["variants"]["int8"].update(validation="good"), "validation must be an object"),
    (lambda m: m["variants"]["int8"].update(size_bytes=-1), "size_bytes -1 must be a whole number"),
    (lambda m: m["variants"]["int8"].update(file="../model.onnx"), "must be a plain file name inside the package"),
    (lambda m: m["variants"]["int8"].update(file="sub\\model.onnx"), "must be a plain file name inside the package"),
    (lambda m: m["variants"]["int8"].update(figures={"a": [[[[[[[[[[[[[[1]]]]]]]]]]]]]]}), "nested deeper"),
    (lambda m: m["source"].update(model=["a"]), "source.model ['a'] must be a non-empty string"),
    (lambda m: m.update(description="d" * 20_000), "description"),
])
def test_wrong_typed_manifest_fields(package_copy, capsys, change, cause):
    _edit_manifest(package_copy, change)
    with pytest.raises(fd.InvalidPackageError, match=cause.replace("[", r"\[").replace("]", r"\]").replace(
            "(", r"\(").replace(")", r"\)")):
        fd.Detector.load(package_copy)
    info_fails_cleanly(package_copy, capsys, "fastvit_manifest.json")


@pytest.mark.parametrize("id2label, cause", [
    ({"0": None, "1": "Real"}, "id2label['0'] must be a non-empty label name, got None"),
    ({"0": "", "1": "Real"}, "must be a non-empty label name"),
    ({"0": 5, "1": "Real"}, "must be a non-empty label name, got 5"),
    ({"0": "Fake", "1": "fake"}, "names a label twice"),
    ({"zero": "Fake", "1": "Real"}, "keys must be integers, got 'zero'"),
    ({"0": "Fake", "2": "Real"}, "indices must be 0..1"),
    ([["0", "Fake"]], "has no id2label mapping"),
])
def test_labels_are_validated(tmp_path, capsys, id2label, cause):
    package = write_package(tmp_path / "labels", config={**CONFIG, "id2label": id2label})
    with pytest.raises(fd.InvalidPackageError, match=cause.replace("[", r"\[").replace("]", r"\]")):
        fd.Detector.load(package)
    info_fails_cleanly(package, capsys, "id2label")


def test_variant_must_be_a_name(vit_package):
    for bad in ([], None, 5, {"fp32"}):
        with pytest.raises(fd.VariantNotFoundError, match="a variant is named by a string"):
            fd.Detector.load(vit_package, variant=bad)


# --- deployment: another user must be able to read what the exporter wrote ---------------------------------


@pytest.mark.parametrize("umask, directory_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_export_honours_the_umask(exporter, checkpoints, tmp_path, umask, directory_mode, file_mode):
    previous = os.umask(umask)
    try:
        settings = exporter.ExportSettings(str(checkpoints["vit"]), tmp_path / "package", quantize="dynamic")
        exporter.export_package(settings, log=lambda _text: None)
    finally:
        os.umask(previous)
    package = tmp_path / "package"
    assert stat.S_IMODE(package.stat().st_mode) == directory_mode
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in package.iterdir()}
    assert {"model.onnx_data", "model_quantized.onnx_data", MANIFEST_FILE} <= set(modes)
    assert set(modes.values()) == {file_mode}, modes


def test_another_user_can_read_the_exported_package(packages, tmp_path):
    """A server running as another user (nobody) can list and read every file an export with the usual umask
    wrote. Checked by a forked child that drops to nobody and reads them (it can't run this Python: the
    interpreter lives under root's 0700 home here)."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    import pwd

    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="fastvit-shared-"))
    try:
        os.chmod(shared, 0o755)
        copy = shared / "package"
        shutil.copytree(packages["vit"], copy)  # copytree keeps the exporter's modes
        files = sorted(copy.iterdir())
        child = os.fork()
        if child == 0:  # the child: drop privileges, read, report through the exit code only
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                os.listdir(copy)
                for path in files:
                    with open(path, "rb") as handle:
                        handle.read(1)
                os._exit(0)
            except BaseException:  # noqa: BLE001 - the forked child reports only through its exit code
                os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "nobody can't read the package"
        os.chmod(files[0], 0o600)  # the control: a file only root may read makes the check fail
        child = os.fork()
        if child == 0:
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                with open(files[0], "rb") as handle:
                    handle.read(1)
                os._exit(0)
            except BaseException:  # noqa: BLE001 - the forked child reports only through its exit code
                os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 1
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --- configs are vouched for like graphs --------------------------------------------------------------------


def _shift_normalisation(package) -> None:
    """What an attacker with write access to a cache would do: mean and std still in the accepted ranges, so the
    package opens, but every probability moves."""
    path = package / "preprocessor_config.json"
    processor = json.loads(path.read_text())
    processor.update(image_mean=[0.3, 0.3, 0.3], image_std=[0.9, 0.9, 0.9])
    path.write_text(json.dumps(processor))


def _probabilities(detector: fd.Detector) -> np.ndarray:
    return np.array([list(detector.predict(colour(rgb)).probabilities.values())
                     for rgb in ((250, 10, 10), (128, 128, 128))])


def test_a_tampered_preprocessor_config_is_refused(package_copy, capsys):
    honest = _probabilities(fd.Detector.load(package_copy))
    _shift_normalisation(package_copy)
    with pytest.raises(fd.ChecksumMismatchError, match="preprocessor_config.json .*the manifest says"):
        fd.Detector.load(package_copy)
    # The attack is real: unverified, the same package answers otherwise.
    assert not np.allclose(_probabilities(fd.Detector.load(package_copy, verify=False)), honest)
    predicted = main(["predict", "--model", str(package_copy), str(write_png(package_copy.parent / "x.png"))])
    assert predicted == 2 and "preprocessor_config.json" in capsys.readouterr().err


def write_png(path: Path) -> Path:
    path.write_bytes(colour((250, 10, 10)))
    return path


def test_a_config_of_another_size_is_refused_unhashed(package_copy):
    with open(package_copy / "config.json", "a") as handle:
        handle.write("\n")  # the same JSON, one byte more: the manifest vouches for bytes, not for meaning
    with pytest.raises(fd.ChecksumMismatchError, match="config.json is [0-9,]+ bytes, the manifest says"):
        fd.Detector.load(package_copy)


def test_the_bytes_parsed_are_the_bytes_verified(package_copy):
    """A config swapped after the package opened can't pass verification with the honest bytes it replaced."""
    package = fd.ModelPackage.open(package_copy)
    _shift_normalisation(package_copy)
    package.verify(package.variant())  # what was parsed is what the manifest vouches for
    with pytest.raises(fd.ChecksumMismatchError, match="preprocessor_config.json"):
        fd.ModelPackage.open(package_copy).verify_configs()


@pytest.mark.parametrize("change, cause", [
    (lambda m: m.pop("configs"), "configs None must list the config files"),
    (lambda m: m.update(configs=[]), "configs \\[\\] must list the config files"),
    (lambda m: m["configs"].pop(), "leaves out preprocessor_config.json"),
    (lambda m: m["configs"].append({**m["configs"][0], "file": "extra.json"}), "names extra.json, which this runtime"),
    (lambda m: m["configs"].append(m["configs"][0]), "names a file twice"),
    (lambda m: m["configs"][0].update(file="../config.json"), "plain file name"),
    (lambda m: m["configs"][0].update(sha256=None), "configs\\[0\\].sha256 None must be 64 hex digits"),
])
def test_a_format_3_manifest_vouches_for_every_config(package_copy, capsys, change, cause):
    _edit_manifest(package_copy, change)
    with pytest.raises(fd.InvalidPackageError, match=cause):
        fd.Detector.load(package_copy, verify=False)  # a manifest that can't vouch is refused, verified or not
    info_fails_cleanly(package_copy, capsys, "fastvit_manifest.json")


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_manifest_loads_with_its_configs_unverified(package_copy, capsys, version):
    honest = _probabilities(fd.Detector.load(package_copy))

    def older(manifest):
        manifest.update(format_version=version)
        del manifest["configs"]
    _edit_manifest(package_copy, older)  # format 1 differs from 2 only in variants without data files
    package = fd.ModelPackage.open(package_copy)
    assert not package.configs_verified
    np.testing.assert_array_equal(_probabilities(fd.Detector.load(package_copy)), honest)
    assert main(["info", str(package_copy)]) == 0
    assert f"configs unverified (a v{version} manifest doesn't vouch for them" in capsys.readouterr().out
    model = package_copy / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(fd.ChecksumMismatchError, match="model.onnx is"):  # its graphs are still checked
        fd.Detector.load(package_copy, variant="fp32")


def test_the_model_card_promises_what_loading_checks(package_copy):
    """The card's sentence names what is checked; each file it names is refused when changed."""
    from fastvit_detect.modelcard import model_card

    card = model_card(fd.ModelPackage.open(package_copy), "me/detector")
    assert ("every file it reads (`config.json`, `preprocessor_config.json`, the variant's graph and weights) is "
            "checked against the size and sha256") in card
    variant = fd.ModelPackage.open(package_copy).variant()
    for path in (package_copy / "config.json", package_copy / "preprocessor_config.json",
                 *(file for file, _, _ in variant.files)):
        original = path.read_bytes()
        # A JSON file stays valid JSON, so that only the manifest can tell; a graph or weights file loses a bit.
        path.write_bytes(original + b" " if path.suffix == ".json" else original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(fd.ChecksumMismatchError, match=path.name):
            fd.Detector.load(package_copy)
        path.write_bytes(original)
    fd.Detector.load(package_copy)

    _edit_manifest(package_copy, lambda m: (m.update(format_version=2), m.pop("configs")))
    card = model_card(fd.ModelPackage.open(package_copy), "me/detector")
    assert "every file" not in card
    assert "`config.json` and `preprocessor_config.json` are not (a format 2 manifest doesn't vouch for them" in card
