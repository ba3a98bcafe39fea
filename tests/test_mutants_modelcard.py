"""What modelcard's survivors of the automatic mutation run showed untested: the card's origin sentence for each
kind of source, the variant table's sizes and reference, the provenance lines, and the caps on manifest text.
Expected values are read from the package's manifest JSON by the test (the card's source), not from modelcard.py."""

from __future__ import annotations

import json
import shutil

import pytest
from hostile import write_package

from fastvit_detect.modelcard import model_card
from fastvit_detect.package import MANIFEST_FILE, ModelPackage


def edited(package, change) -> dict:
    path = package / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


def card_of(package) -> str:
    return model_card(ModelPackage.open(package), "me/detector")


def section(card: str, heading: str) -> list[str]:
    body = card.split(f"## {heading}\n\n", 1)[1]
    return body.split("\n\n## ", 1)[0].strip("\n").splitlines()


@pytest.mark.parametrize(("model", "origin"), [
    ("org/checkpoint", "[org/checkpoint](https://huggingface.co/org/checkpoint)"),  # a Hub id: linked
    ("/home/builder/runs/my-vit", "The checkpoint `my-vit`"),  # a local folder: its name only
    (None, "A Vision Transformer image classifier"),  # unknown
])
def test_the_card_says_where_the_model_came_from(package_copy, model, origin):
    edited(package_copy, lambda manifest: manifest["source"].update(model=model, revision=None))
    card = card_of(package_copy)
    title = card.index("# me/detector\n\n")
    assert card[title:].split("\n\n")[1].startswith(f"{origin}, exported to ONNX as a fastvit-detect model package")
    assert "/home/builder" not in card


def test_a_manifest_less_package_gets_a_card_that_promises_nothing(tmp_path):
    card = card_of(write_package(tmp_path / "optimum-layout"))
    assert section(card, "Provenance") == ["- no manifest: the files can't be verified"]
    assert "no file is checked: the package has no `fastvit_manifest.json`." in card
    assert "A Vision Transformer image classifier, exported" in card
    rows = [row for row in section(card, "Variants") if row.startswith("| ") and "---" not in row][1:]
    assert rows and all(row.split(" | ")[2] == "-" for row in rows)  # no manifest, no sizes to show
    assert section(card, "Variants")[-1] == ("Validation: each variant's logits against PyTorch fp32 on the same "
                                             "images, at export time.")


def test_the_variant_table_sums_each_variants_files_and_names_the_reference(package_copy):
    manifest = edited(package_copy, lambda manifest: manifest["variants"]["fp32"].update(validation={
        "images": 123456, "max_abs_logit_diff": 0.000123456, "max_abs_probability_diff": 0.5, "top1_agreement": 1}))
    table = section(card_of(package_copy), "Variants")
    for name, entry in manifest["variants"].items():
        row = next(line for line in table if line.startswith(f"| {name}"))
        megabytes = (entry["size_bytes"] + entry.get("data_size_bytes", 0)) / 1e6
        assert row.split(" | ")[2] == f"{megabytes:.1f} MB", row
        figures = entry.get("validation", {})
        if figures:  # 3 significant digits; agreement in percent; a count of images as it is
            assert row.split(" | ")[3:] == [f"{figures['max_abs_logit_diff']:.3g}",
                                            f"{figures['max_abs_probability_diff']:.3g}",
                                            f"{100 * figures['top1_agreement']:.2f} %", f"{figures['images']} |"], row
    assert table[-1] == (f"Validation: each variant's logits against {manifest['validation']['reference']} on the "
                         "same images, at export time.")
    edited(package_copy, lambda manifest: manifest.pop("validation"))
    assert section(card_of(package_copy), "Variants")[-1].startswith("Validation: each variant's logits against "
                                                                     "PyTorch fp32 on the same images")


def test_provenance_lists_the_export_date_tools_opset_and_format(package_copy):
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    tools = ", ".join(f"{name} {version}" for name, version in manifest["exporter"].items())
    assert section(card_of(package_copy), "Provenance") == [
        f"- exported {manifest['created']}", f"- with {tools}", f"- ONNX opset {manifest['opset']}",
        f"- format `fastvit-detect-model-package` version {manifest['format_version']}"]
    edited(package_copy, lambda manifest: manifest.update(exporter={}))  # no tools named: no "with" line
    assert not any(line.startswith("- with") for line in section(card_of(package_copy), "Provenance"))
    edited(package_copy, lambda manifest: [manifest.pop(key) for key in ("created", "exporter", "opset")])
    assert section(card_of(package_copy), "Provenance") == [
        f"- format `fastvit-detect-model-package` version {manifest['format_version']}"]


def test_manifest_text_is_cut_to_2000_characters_and_a_table_cell_to_200(package_copy, tmp_path):
    edited(package_copy, lambda manifest: manifest.update(intended_use="u" * 2500, description=None))
    card = card_of(package_copy)
    assert "\n" + "u" * 2000 + "\n" in card and "u" * 2001 not in card
    local = tmp_path / ("v" * 250)  # a source folder's name goes into a code span: a cell
    shutil.copytree(package_copy, local)
    edited(local, lambda manifest: manifest["source"].update(model=str(local)))
    assert "The checkpoint `" + "v" * 200 + "`" in card_of(local)
