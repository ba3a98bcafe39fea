"""What the manifest's survivors of the automatic mutation run showed untested: refusals of a manifest that isn't an
object or another format, a variant that isn't an object, a data file the graph doesn't load; a manifest with no
source; the free-form parts' limits through lists, on NaN and on long strings at the exact edge; and how long a
value an error message quotes in full. The expected messages are written out here, not computed by the code."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest

from fastvit_detect.errors import InvalidPackageError
from fastvit_detect.manifest import MAX_TEXT, FileEntry, Manifest, Source, VariantEntry, parse_file_entry
from fastvit_detect.package import MANIFEST_FILE


@pytest.fixture(scope="module")
def manifest(vit_package) -> dict:
    return json.loads((vit_package / MANIFEST_FILE).read_text())


def changed(manifest: dict, **fields) -> dict:
    data = copy.deepcopy(manifest)
    data.update(fields)
    return data


def a_variant(manifest: dict) -> str:
    return next(iter(manifest["variants"]))


@pytest.mark.parametrize("data", [[], "a manifest", 7, None])
def test_a_manifest_that_is_no_json_object_is_refused_by_name(data):
    with pytest.raises(InvalidPackageError, match=r"^manifest: must be a JSON object$"):
        Manifest.parse(data)


def test_a_manifest_of_another_format_is_refused_naming_its_format(manifest):
    with pytest.raises(InvalidPackageError, match=r"^pkg/m\.json: isn't a fastvit-detect-model-package manifest "
                                                  r"\(its format is 'onnx-bundle'\)$"):
        Manifest.parse(changed(manifest, format="onnx-bundle"), where="pkg/m.json")


def test_a_variant_that_is_no_object_is_refused_by_name(manifest):
    name = a_variant(manifest)
    with pytest.raises(InvalidPackageError, match=rf"variant '{name}' must be an object"):
        Manifest.parse(changed(manifest, variants={name: ["model.onnx"]}))


def test_a_data_file_the_graph_does_not_load_is_refused(manifest):
    data = copy.deepcopy(manifest)
    variant = data["variants"][a_variant(manifest)]
    variant.update(data_file="weights.bin", data_sha256="0" * 64, data_size_bytes=1)
    with pytest.raises(InvalidPackageError, match=rf"data_file 'weights\.bin' must be "
                                                  rf"'{variant['file']}_data', the file its graph loads"):
        Manifest.parse(data)


def test_a_manifest_without_a_source_has_an_empty_one(manifest):
    data = copy.deepcopy(manifest)
    data.pop("source", None)
    parsed = Manifest.parse(data)
    assert parsed.source == Source(model=None, revision=None, architecture=None, model_type=None)
    assert parsed.to_dict()["source"] == {"model": None, "revision": None, "architecture": None, "model_type": None}


def lists(levels: int):
    return 1 if levels == 0 else [lists(levels - 1)]


def test_free_form_lists_nest_12_levels_and_not_13(manifest):
    assert Manifest.parse(changed(manifest, figures=lists(12))).extra["figures"] == lists(12)
    with pytest.raises(InvalidPackageError, match="figures is nested deeper than 12 levels"):
        Manifest.parse(changed(manifest, figures=lists(13)))


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_free_form_figures_hold_no_nan_or_infinity(manifest, number):
    with pytest.raises(InvalidPackageError, match="figures holds a NaN or infinite number"):
        Manifest.parse(changed(manifest, figures={"accuracy": [0.5, number]}))


def test_free_form_strings_hold_10000_characters_and_not_one_more(manifest):
    assert MAX_TEXT == 10_000
    kept = Manifest.parse(changed(manifest, notes={"text": "n" * 10_000}))
    assert kept.extra["notes"]["text"] == "n" * 10_000
    with pytest.raises(InvalidPackageError, match="notes holds a string over 10,000 characters"):
        Manifest.parse(changed(manifest, notes={"text": "n" * 10_001}))


def test_an_error_quotes_a_value_of_80_characters_whole_and_cuts_a_longer_one(manifest):
    whole = "x" * 78  # its repr, quotes included, is 80 characters
    with pytest.raises(InvalidPackageError, match=rf"source '{whole}' must be an object"):
        Manifest.parse(changed(manifest, source=whole))
    longer = "x" * 79  # repr of 81: the first 77 characters and "..."
    with pytest.raises(InvalidPackageError) as refused:
        Manifest.parse(changed(manifest, source=longer))
    assert f"source '{'x' * 76}... must be an object" in str(refused.value)


@pytest.mark.parametrize("part", ["quantization", "validation"])
def test_a_variants_quantization_or_validation_that_is_no_object_is_refused(manifest, part):
    data = copy.deepcopy(manifest)
    name = a_variant(manifest)
    data["variants"][name][part] = ["int8"]
    with pytest.raises(InvalidPackageError, match=rf"variant '{name}'\.{part} must be an object"):
        Manifest.parse(data)


def test_a_config_entry_that_is_no_object_is_refused_by_its_index(manifest):
    with pytest.raises(InvalidPackageError, match=r"configs\[0\] must be an object"):
        Manifest.parse(changed(manifest, configs=["config.json"]))


def test_a_file_entry_beside_the_variants_is_checked_as_a_variants_graph():
    entry = {"file": "faces.onnx", "sha256": "a" * 64, "size_bytes": 12}
    assert parse_file_entry(entry, "faces.detector", "pkg") == FileEntry("faces.onnx", "a" * 64, 12)
    with pytest.raises(InvalidPackageError, match=r"^pkg: faces\.detector must be an object$"):
        parse_file_entry(["faces.onnx"], "faces.detector", "pkg")


def test_a_manifest_vouches_for_up_to_16_configs(manifest):
    def configs(count: int) -> list[dict]:
        return [{"file": f"config-{index}.json", "sha256": "a" * 64, "size_bytes": 1} for index in range(count)]

    assert len(Manifest.parse(changed(manifest, configs=configs(16))).configs) == 16
    with pytest.raises(InvalidPackageError, match=r"must list the config files it vouches for \(1 to 16\)"):
        Manifest.parse(changed(manifest, configs=configs(17)))


def test_a_parsed_variant_entry_cannot_be_changed(manifest):
    """Shared by the package, the detector and the server: a VariantEntry is a value."""
    entry = next(iter(Manifest.parse(manifest).variants.values()))
    assert isinstance(entry, VariantEntry)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.runtime = "openvino"  # type: ignore[misc]


def test_a_variants_runtime_name_holds_100_characters_and_not_one_more(manifest):
    """Another runtime's name is kept as written (a newer fastvit-detect's), within the same bound as a precision."""
    name = a_variant(manifest)
    data = copy.deepcopy(manifest)
    data["variants"][name]["runtime"] = "r" * 100
    assert Manifest.parse(data).variants[name].runtime == "r" * 100
    data["variants"][name]["runtime"] = "r" * 101
    with pytest.raises(InvalidPackageError, match=rf"variant '{name}'\.runtime .* at most 100 characters"):
        Manifest.parse(data)
