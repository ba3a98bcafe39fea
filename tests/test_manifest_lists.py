"""Manifest fields in list form: an empty list and a list holding an empty string are refused with the field's
name wherever a list is expected (labels, a variant's CPU requirement), and a list where text is expected is
refused too; never read as "no requirement" or as a label called "". Only the string forms were tested before."""

from __future__ import annotations

import copy
import json

import pytest

from fastvit_detect import ModelPackage
from fastvit_detect.errors import InvalidPackageError
from fastvit_detect.manifest import Manifest
from fastvit_detect.package import MANIFEST_FILE


@pytest.fixture(scope="module")
def manifest(vit_package) -> dict:
    return json.loads((vit_package / MANIFEST_FILE).read_text())


def quantized(data: dict) -> dict:
    return next(entry["quantization"] for entry in data["variants"].values() if entry.get("quantization"))


def with_change(manifest: dict, change) -> dict:
    data = copy.deepcopy(manifest)
    change(data)
    return data


CPU = "quantization.requires_cpu_flags_any"
REFUSED = {
    "labels []": (lambda m: m.update(labels=[]), "labels"),
    'labels [""]': (lambda m: m.update(labels=[""]), "labels"),
    'labels ["Fake", ""]': (lambda m: m.update(labels=["Fake", ""]), "labels"),
    'labels [" "]': (lambda m: m.update(labels=["Fake", " "]), "labels"),
    "labels [[]]": (lambda m: m.update(labels=[[], "Real"]), "labels"),
    "cpu flags []": (lambda m: quantized(m).update(requires_cpu_flags_any=[]), CPU),
    'cpu flags [""]': (lambda m: quantized(m).update(requires_cpu_flags_any=[""]), CPU),
    'cpu flags ["avx512_vnni", ""]': (lambda m: quantized(m).update(requires_cpu_flags_any=["avx512_vnni", ""]), CPU),
    "cpu flags [[]]": (lambda m: quantized(m).update(requires_cpu_flags_any=[[]]), CPU),
    "cpu flags as a string": (lambda m: quantized(m).update(requires_cpu_flags_any="avx512_vnni"), CPU),
    "default_variant []": (lambda m: m.update(default_variant=[]), "default_variant"),
    'default_variant [""]': (lambda m: m.update(default_variant=[""]), "default_variant"),
    'description [""]': (lambda m: m.update(description=[""]), "description"),
    "created []": (lambda m: m.update(created=[]), "created"),
    'source.model [""]': (lambda m: m["source"].update(model=[""]), "source.model"),
    "variants []": (lambda m: m.update(variants=[]), "variants"),
    'variants [""]': (lambda m: m.update(variants=[""]), "variants"),
    'precision [""]': (lambda m: next(iter(m["variants"].values())).update(precision=[""]), "precision"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_list_forms_are_refused_naming_the_field(manifest, case):
    change, field = REFUSED[case]
    with pytest.raises(InvalidPackageError, match=field.replace(".", r"\.")):
        Manifest.parse(with_change(manifest, change))


@pytest.mark.parametrize("case", ['labels [""]', "labels []", 'cpu flags [""]', "cpu flags []"])
def test_a_package_with_such_a_manifest_does_not_open(package_copy, manifest, case):
    change, field = REFUSED[case]
    (package_copy / MANIFEST_FILE).write_text(json.dumps(with_change(manifest, change)))
    with pytest.raises(InvalidPackageError, match=field.replace(".", r"\.")):
        ModelPackage.open(package_copy)


def test_the_valid_list_forms_are_kept(manifest):
    data = with_change(manifest, lambda m: quantized(m).update(requires_cpu_flags_any=["avx512_vnni", "avx512bw"]))
    parsed = Manifest.parse(data)
    entry = next(variant for variant in parsed.variants.values() if variant.quantization)
    assert entry.required_cpu_flags == ("avx512_vnni", "avx512bw")
    assert parsed.labels == tuple(manifest["labels"]) and len(parsed.labels) >= 2
