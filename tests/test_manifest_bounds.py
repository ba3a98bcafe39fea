"""The manifest's limits at their exact edges (format versions, text lengths, nesting depth, variant names), its
round trip through to_dict (what the Hub push and the server's /api/v1/model publish), and its entries being
immutable (a parsed manifest is shared by the package, the detector and the server)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from fastvit_detect.errors import InvalidPackageError
from fastvit_detect.manifest import FileEntry, Manifest, Source
from fastvit_detect.package import MANIFEST_FILE


@pytest.fixture(scope="module")
def manifest(vit_package) -> dict:
    return json.loads((vit_package / MANIFEST_FILE).read_text())


def changed(manifest: dict, **fields) -> dict:
    data = copy.deepcopy(manifest)
    data.update(fields)
    return data


def nested(levels: int):
    return 1 if levels == 0 else {"level": nested(levels - 1)}


def test_format_versions_1_to_3_are_read_and_no_other(manifest):
    assert manifest["format_version"] == 3  # what the exporter writes today: the configs vouched for too
    for version in (1, 2, 3):
        assert Manifest.parse(changed(manifest, format_version=version)).format_version == version
    for version in (0, 4, "3", True):
        with pytest.raises(InvalidPackageError, match="format_version"):
            Manifest.parse(changed(manifest, format_version=version))


def test_text_fields_hold_10000_characters_and_not_one_more(manifest):
    assert Manifest.parse(changed(manifest, description="d" * 10_000)).description == "d" * 10_000
    with pytest.raises(InvalidPackageError, match="description"):
        Manifest.parse(changed(manifest, description="d" * 10_001))


def test_variant_names_hold_100_characters_and_not_one_more(manifest):
    entry = next(iter(manifest["variants"].values()))
    assert list(Manifest.parse(changed(manifest, variants={"v" * 100: entry}, default_variant=None)).variants) == [
        "v" * 100]
    with pytest.raises(InvalidPackageError, match="variants"):
        Manifest.parse(changed(manifest, variants={"v" * 101: entry}, default_variant=None))


def test_free_form_figures_nest_12_levels_and_not_13(manifest):
    def with_validation(value):
        data = copy.deepcopy(manifest)
        next(iter(data["variants"].values()))["validation"] = value
        return data

    Manifest.parse(with_validation(nested(12)))
    with pytest.raises(InvalidPackageError, match="nested deeper than 12 levels"):
        Manifest.parse(with_validation(nested(13)))


def test_the_manifest_round_trips_through_to_dict(manifest):
    parsed = Manifest.parse(manifest)
    assert parsed.to_dict() == manifest
    assert Manifest.parse(parsed.to_dict()) == parsed
    extra = changed(manifest, description="a model", intended_use="tests", labels=["Fake", "Real"])
    assert Manifest.parse(extra).to_dict() == extra
    bare = copy.deepcopy(manifest)
    for key in ("labels", "default_variant", "description", "intended_use"):
        bare.pop(key, None)
    for entry in bare["variants"].values():
        for key in ("precision", "quantization", "validation"):
            entry.pop(key, None)
    assert Manifest.parse(bare).to_dict() == bare  # absent stays absent, never null


def test_parsed_entries_are_immutable(manifest):
    parsed = Manifest.parse(manifest)
    entry = next(iter(parsed.variants.values()))
    for instance, field in ((parsed, "created"), (entry, "precision"), (entry.graph, "sha256"),
                            (parsed.source, "model")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(instance, field, "changed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        FileEntry("a", "b", 1).name = "c"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Source().model = "c"  # type: ignore[misc]


def test_the_exporter_writes_a_version_this_runtime_reads():
    from fastvit_detect.manifest import FORMAT_VERSION, READABLE_FORMAT_VERSIONS

    assert FORMAT_VERSION == max(READABLE_FORMAT_VERSIONS) == 3


@pytest.mark.parametrize("field, value, accepted", [
    ("file", "model.onnx", True), ("file", "", False), ("file", ".", False), ("file", "..", False),
    ("file", "sub/model.onnx", False), ("file", "sub\\model.onnx", False), ("file", ["model.onnx"], False),
    ("sha256", "0" * 64, True), ("sha256", "0" * 63, False), ("sha256", "A" * 64, False), ("sha256", None, False),
    ("size_bytes", 0, True), ("size_bytes", (1 << 50) - 1, True), ("size_bytes", 1 << 50, False),
    ("size_bytes", -1, False), ("size_bytes", True, False), ("size_bytes", 1.0, False),
])
def test_a_file_entrys_fields_at_their_edges(manifest, field, value, accepted):
    data = copy.deepcopy(manifest)
    name, entry = next(iter(data["variants"].items()))
    entry[field] = value
    if accepted:
        assert getattr(Manifest.parse(data).variants[name].graph, "name" if field == "file" else field) == value
    else:
        with pytest.raises(InvalidPackageError, match=f"{field}"):
            Manifest.parse(data)


def test_a_variants_precision_holds_100_characters_and_not_one_more(manifest):
    data = copy.deepcopy(manifest)
    name, entry = next(iter(data["variants"].items()))
    entry["precision"] = "p" * 100
    assert Manifest.parse(data).variants[name].precision == "p" * 100
    entry["precision"] = "p" * 101
    with pytest.raises(InvalidPackageError, match="precision"):
        Manifest.parse(data)
