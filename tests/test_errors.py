"""Every bad input and every broken package has a typed error that names the input and the cause."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import VIT_PROCESSOR, make_checkpoint, png_with_header, revouch_configs, sample_photos
from PIL import Image

import fastvit_detect as fd
from fastvit_detect.package import MANIFEST_FILE, file_sha256


@pytest.mark.parametrize(
    "name, error, cause",
    [
        ("empty.jpg", fd.EmptyImageError, "empty input"),
        ("truncated.jpg", fd.ImageDecodeError, "truncated or corrupt"),
        ("truncated.png", fd.ImageDecodeError, "truncated or corrupt"),
        ("text.jpg", fd.ImageDecodeError, "not a recognised image format"),
        ("bomb.png", fd.ImageTooLargeError, "100000x100000|safety limit"),
        ("a-directory.png", fd.ImageNotFoundError, "is a directory"),
    ],
)
def test_bad_files(vit_package, bad_inputs, name, error, cause):
    detector = fd.Detector.load(vit_package)
    with pytest.raises(error, match=cause) as info:
        detector.predict(bad_inputs[name])
    assert str(bad_inputs[name]) in str(info.value) and info.value.source == str(bad_inputs[name])
    assert isinstance(info.value, fd.InputError) and isinstance(info.value, ValueError)


def test_missing_file(vit_package, tmp_path):
    with pytest.raises(fd.ImageNotFoundError, match="no such file"):
        fd.Detector.load(vit_package).predict(tmp_path / "nope.jpg")


def unreadable_files(tmp_path) -> list[Path]:
    """Regular files that can't be read: /proc/self/mem opens but fails to read (its first page is unmapped:
    EIO); a file of mode 000 can't be opened, except by root, whom permissions don't bind."""
    files = [Path("/proc/self/mem")]
    if os.geteuid() != 0:
        files.append(tmp_path / "secret.jpg")
        Image.new("RGB", (8, 8)).save(files[-1])
        files[-1].chmod(0)
    return files


def test_unreadable_file(vit_package, tmp_path):
    paths = unreadable_files(tmp_path)
    results = fd.Detector.load(vit_package).predict_batch(paths, errors="return")
    for path, result in zip(paths, results):
        assert type(result) is fd.ImageNotFoundError and result.source == str(path)
        assert f"{path}: can't read file" in str(result)


def test_unconvertible_mode(vit_package):
    # "La" (luminance with premultiplied alpha) is a mode Pillow can hold but not convert to RGB.
    with pytest.raises(fd.ImageDecodeError, match="can't convert mode La") as info:
        fd.Detector.load(vit_package).predict(Image.new("La", (16, 16)))
    assert "PIL.Image La 16x16" in str(info.value)


def test_bad_bytes_and_file_objects(vit_package, bad_inputs):
    detector = fd.Detector.load(vit_package)
    with pytest.raises(fd.EmptyImageError, match="<0 bytes>"):
        detector.predict(b"")
    with pytest.raises(fd.ImageDecodeError, match="truncated"):
        detector.predict(io.BytesIO(bad_inputs["truncated.jpg"].read_bytes()))


def test_pixel_cap_is_configurable(vit_package, tmp_path, reference):
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300), (230, 230, 230)).save(path)
    with pytest.raises(fd.ImageTooLargeError, match="120,000 pixels exceeds the cap of 100,000"):
        fd.Detector.load(vit_package, max_pixels=100_000).predict(path)
    with pytest.raises(fd.ImageTooLargeError):  # arrays and PIL images are held to the cap too
        fd.Detector.load(vit_package, max_pixels=100_000).predict(Image.new("RGB", (400, 300)))
    assert fd.Detector.load(vit_package, max_pixels=None).predict(path).label == reference.label("vit", path)
    assert fd.Detector.load(vit_package, max_pixels=120_000).predict(path).label == reference.label("vit", path)
    with pytest.raises(fd.ImageTooLargeError):
        fd.Detector.load(vit_package, max_pixels=119_999).predict(path)


def test_header_bomb_is_refused_before_decoding(vit_package):
    # 50000 x 3000 = 150 MP: over our 100 MP default, under Pillow's own limit, so our check is what fires.
    with pytest.raises(fd.ImageTooLargeError, match="150,000,000 pixels"):
        fd.Detector.load(vit_package).predict(png_with_header(50_000, 3_000))


@pytest.mark.parametrize("level", [40, 220])
def test_corrupt_exif_still_classifies(vit_package, tmp_path, reference, level):
    path = tmp_path / "bad-exif.jpg"
    Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(path, exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
    same_pixels = tmp_path / "same-pixels.png"  # what the JPEG decodes to, without the EXIF: PyTorch's input
    Image.open(path).convert("RGB").save(same_pixels)
    assert fd.Detector.load(vit_package).predict(path).label == reference.label("vit", same_pixels)


# --- packages -----------------------------------------------------------------------------------------------


def test_missing_package_directory(tmp_path):
    with pytest.raises(fd.PackageNotFoundError, match="no such directory"):
        fd.Detector.load(tmp_path / "absent")


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_missing_config_file(package_copy, name):
    (package_copy / name).unlink()
    with pytest.raises(fd.MissingFileError, match=name):
        fd.Detector.load(package_copy)


def test_missing_model_file(package_copy):
    (package_copy / "model_quantized.onnx").unlink()
    with pytest.raises(fd.MissingFileError, match="model_quantized.onnx is missing"):
        fd.Detector.load(package_copy)


def flip_byte(path, fraction: float, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= mask
    path.write_bytes(bytes(data))


def test_checksum_mismatch_is_refused(package_copy):
    flip_byte(package_copy / "model_quantized.onnx", 0.5, 0xFF)
    with pytest.raises(fd.ChecksumMismatchError, match="sha256"):
        fd.Detector.load(package_copy)
    with pytest.raises(fd.InvalidPackageError, match="onnxruntime can't load"):  # unverified, still typed
        fd.Detector.load(package_copy, verify=False)


def test_weights_file_is_verified_too(package_copy):
    weights = package_copy / "model_quantized.onnx_data"
    flip_byte(weights, 1 / 3, 0x01)  # one weight's low bit: the graph still loads unverified
    with pytest.raises(fd.ChecksumMismatchError, match="model_quantized.onnx_data has sha256"):
        fd.Detector.load(package_copy)
    assert fd.Detector.load(package_copy, verify=False).variant.name == "int8"  # the user may opt out
    weights.unlink()
    with pytest.raises(fd.MissingFileError, match="model_quantized.onnx_data is missing"):
        fd.Detector.load(package_copy)


def test_weights_file_the_manifest_does_not_vouch_for_is_refused(package_copy):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    for key in ("data_file", "data_sha256", "data_size_bytes"):
        del manifest["variants"]["int8"][key]
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(fd.InvalidPackageError, match="model_quantized.onnx_data is in the package but the manifest"):
        fd.Detector.load(package_copy)


def test_format_1_manifest_without_weights_files_still_loads(package_copy, reference):
    """Packages written before weights moved to data files: one self-contained graph per variant."""
    import onnx

    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    for name, entry in manifest["variants"].items():
        graph = package_copy / entry["file"]
        single = package_copy / f"{name}-single.onnx"
        onnx.save_model(onnx.load(str(graph)), str(single))  # weights pulled back inside
        graph.unlink()
        (package_copy / entry.pop("data_file")).unlink()
        del entry["data_sha256"], entry["data_size_bytes"]
        entry.update(file=single.name, sha256=file_sha256(single), size_bytes=single.stat().st_size)
    (package_copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 1}))
    photos = sample_photos()
    for name in ("fp32", "int8"):
        detector = fd.Detector.load(package_copy, variant=name)
        assert detector.variant.data_path is None and detector.variant.path.name == f"{name}-single.onnx"
        assert [p.label for p in detector.predict_batch(photos)] == reference.labels("vit", photos)


def test_truncated_model_is_refused_by_size(package_copy):
    model = package_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    # The message's own words: the test's temporary path has "truncated" in it too.
    with pytest.raises(fd.ChecksumMismatchError, match="model.onnx is 1,000 bytes, the manifest says .*truncated"):
        fd.Detector.load(package_copy, variant="fp32")


def test_unknown_variant(package_copy):
    with pytest.raises(fd.VariantNotFoundError, match="available: fp32, int8"):
        fd.Detector.load(package_copy, variant="fp16")


def test_bad_json_and_future_format(package_copy):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    (package_copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(fd.InvalidPackageError, match="format_version 99"):
        fd.Detector.load(package_copy)
    (package_copy / "config.json").write_text("{not json")
    with pytest.raises(fd.InvalidPackageError, match="config.json isn't valid JSON"):
        fd.ModelPackage.open(package_copy)


def test_broken_id2label(package_copy):
    config = json.loads((package_copy / "config.json").read_text())
    config["id2label"] = {"0": "Fake", "2": "Real"}
    (package_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(fd.InvalidPackageError, match="id2label"):
        fd.Detector.load(package_copy)


def test_label_count_mismatch(package_copy):
    config = json.loads((package_copy / "config.json").read_text())
    config["id2label"] = {"0": "Fake", "1": "Real", "2": "Other"}
    (package_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(fd.InvalidPackageError, match=r"manifest's labels \['Fake', 'Real'\] differ"):
        fd.Detector.load(package_copy)
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    (package_copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "labels": ["Fake", "Real", "Other"]}))
    revouch_configs(package_copy)
    with pytest.raises(fd.IncompatibleModelError, match=r"expected \(N, 3\)"):
        fd.Detector.load(package_copy)


def test_another_models_onnx_with_another_input_size(package_copy, exporter, tmp_path):
    small = make_checkpoint(tmp_path / "small", {**VIT_PROCESSOR, "size": {"height": 32, "width": 32}}, image_size=32)
    exporter.export_package(exporter.ExportSettings(str(small), tmp_path / "small-package", quantize="none"),
                            log=lambda _t: None)
    shutil.copyfile(tmp_path / "small-package" / "model.onnx", package_copy / "model.onnx")
    with pytest.raises(fd.IncompatibleModelError, match="input height is 32"):
        fd.Detector.load(package_copy, variant="fp32", verify=False)


def test_not_an_onnx_file(package_copy):
    (package_copy / "model.onnx").write_bytes(b"definitely not protobuf")
    with pytest.raises(fd.InvalidPackageError, match="model.onnx isn't a readable ONNX graph"):
        fd.Detector.load(package_copy, variant="fp32", verify=False)


def test_unavailable_provider(vit_package):
    with pytest.raises(fd.ProviderError, match="NoSuchExecutionProvider"):
        fd.Detector.load(vit_package, providers=["NoSuchExecutionProvider"])


def test_package_errors_share_one_base_class(package_copy, tmp_path):
    package_errors = [fd.PackageNotFoundError, fd.MissingFileError, fd.InvalidPackageError, fd.ChecksumMismatchError,
                      fd.VariantNotFoundError, fd.IncompatibleModelError, fd.UnsupportedPreprocessorError]
    for error in package_errors:
        assert issubclass(error, fd.ModelPackageError) and not issubclass(error, fd.InputError), error
    assert issubclass(fd.ModelPackageError, fd.FastVitDetectError)
    flip_byte(package_copy / "model.onnx_data", 0.5, 0x01)
    for path, variant, error in [(tmp_path / "absent", "auto", fd.PackageNotFoundError),
                                 (package_copy, "fp16", fd.VariantNotFoundError),
                                 (package_copy, "fp32", fd.ChecksumMismatchError)]:
        with pytest.raises(fd.ModelPackageError) as info:
            fd.Detector.load(path, variant=variant)
        assert type(info.value) is error


def test_one_base_class_catches_everything(vit_package, bad_inputs, tmp_path):
    for action in (lambda: fd.Detector.load(tmp_path / "absent"),
                   lambda: fd.Detector.load(vit_package).predict(bad_inputs["text.jpg"]),
                   lambda: fd.Detector.load(vit_package, variant="nope")):
        with pytest.raises(fd.FastVitDetectError):
            action()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sha256": None}, "sha256 None must be 64 hex digits"),
        ({"file": "../elsewhere.onnx"}, "plain file name"),
        ({"file": "/etc/hostname"}, "plain file name"),
        ({"size_bytes": "big"}, "size_bytes"),
        ({"data_file": "../weights"}, "data_file '../weights' must be a plain file name"),
        ({"data_sha256": "abc"}, "data_sha256 'abc' must be 64 hex digits"),
        ({"data_size_bytes": -1}, "data_size_bytes -1"),
        # Another (verifiable) file named as the weights: onnxruntime would load the unverified real one.
        ({"data_file": "model_quantized.onnx"}, "must be 'model_quantized.onnx_data', the file its graph loads"),
        ({"data_file": "config.json"}, "must be 'model_quantized.onnx_data'"),
        ({"quantization": {"requires_cpu_flags_any": "avx512_vnni"}}, "must be a non-empty list of CPU flag names"),
    ],
)
def test_manifest_cannot_switch_verification_off(package_copy, change, message):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    manifest["variants"]["int8"].update(change)
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(fd.InvalidPackageError, match=message):
        fd.Detector.load(package_copy)


def test_empty_manifest_is_refused_not_ignored(package_copy):
    (package_copy / MANIFEST_FILE).write_text("{}")
    with pytest.raises(fd.InvalidPackageError, match="isn't a fastvit-detect-model-package manifest"):
        fd.Detector.load(package_copy)


def test_malformed_default_variant_is_refused(package_copy):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    (package_copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "default_variant": ["fp32"]}))
    with pytest.raises(fd.InvalidPackageError, match=r"default_variant \['fp32'\] must be a non-empty string"):
        fd.Detector.load(package_copy)
