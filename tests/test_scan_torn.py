"""Resuming a scan that died part-way through writing its last record, at every byte of that record: the torn
record is cut (its image is classified again), every complete one is kept, and the next record starts on a line
of its own. The cases that matter most are the last two bytes of a CSV record (before ``\\r\\n``, and between
``\\r`` and ``\\n``) and the last byte of a JSON line: the fields are all there, the line end is not.

The expected file is the bytes written before the last record, taken from the writer itself before the record was
added; the expected records are read back with Python's csv and json modules."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from fastvit_detect.scan import ScanOutput

LABELS = ("Fake", "Real")


def records(folder: Path) -> list[dict]:
    good = {"label": "Real", "score": 0.75, "fake_probability": 0.25, "probabilities": {"Fake": 0.25, "Real": 0.75}}
    return [
        {"image": str(folder / "a.png"), **good},
        {"image": str(folder / "b, with \"quotes\".png"), "error": {"type": "ImageDecodeError",
                                                                   "message": "b: cannot identify\nimage file"}},
        {"image": str(folder / "c.png"), **good},  # the one torn: a success row ends in two empty fields
        {"image": str(folder / "d.png"), "error": {"type": "EmptyImageError", "message": "d: empty"}},
    ]


def written(path: Path, fmt: str, rows: list[dict]) -> bytes:
    with ScanOutput(path, LABELS, fmt, overwrite=True) as output:
        for row in rows:
            output.write_record(row)
    return path.read_bytes()


def images_in(path: Path, fmt: str) -> list[str]:
    text = path.read_bytes().decode("utf-8")
    if fmt == "csv":
        return [row["image"] for row in csv.DictReader(io.StringIO(text, newline=""), strict=True)]
    return [json.loads(line)["image"] for line in text.splitlines()]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_record_torn_at_any_byte_is_cut_and_the_rest_kept(tmp_path, fmt):
    rows = records(tmp_path)
    path = tmp_path / f"results.{fmt}"
    before = written(path, fmt, rows[:2])
    whole = written(path, fmt, rows[:3])
    assert whole.startswith(before)
    assert whole.endswith(b"\r\n" if fmt == "csv" else b"\n")
    for cut in range(len(before), len(whole) + 1):
        path.write_bytes(whole[:cut])
        output = ScanOutput(path, LABELS, fmt)
        complete = cut == len(whole)
        kept = rows[:3] if complete else rows[:2]
        assert output.done == {str(Path(row["image"]).resolve()) for row in kept}, f"cut at byte {cut}"
        assert path.read_bytes() == (whole if complete else before), f"cut at byte {cut}"
        output.write_record(rows[3])
        output.close()
        assert images_in(path, fmt) == [row["image"] for row in [*kept, rows[3]]], f"cut at byte {cut}"


def test_the_two_cuts_at_a_csv_line_end(tmp_path):
    rows = records(tmp_path)
    path = tmp_path / "results.csv"
    before = written(path, "csv", rows[:2])
    whole = written(path, "csv", rows[:3])
    for cut, tail in ((len(whole) - 2, b",,"), (len(whole) - 1, b",,\r")):
        path.write_bytes(whole[:cut])
        assert path.read_bytes().endswith(tail)  # every field of c.png is there; its line end is not
        ScanOutput(path, LABELS, "csv").close()
        assert path.read_bytes() == before


def test_a_header_torn_before_its_line_end_starts_the_file_afresh(tmp_path):
    path = tmp_path / "results.csv"
    header = written(path, "csv", [])
    assert header.endswith(b"\r\n")
    path.write_bytes(header[:-2])
    output = ScanOutput(path, LABELS, "csv")
    assert output.done == set()
    output.write_record(records(tmp_path)[0])
    output.close()
    assert images_in(path, "csv") == [records(tmp_path)[0]["image"]]


@pytest.mark.parametrize("torn_length", [1, 65_535, 65_536, 65_537, 200_000])
def test_a_torn_json_line_longer_than_the_repair_block_is_cut_whole(tmp_path, torn_length):
    """The repair walks back from the end in 64 KiB blocks: a torn line of any length, within one block, at its
    edge or across several, is cut back to the newline before it, and nothing earlier is touched."""
    rows = records(tmp_path)
    path = tmp_path / "results.jsonl"
    before = written(path, "jsonl", rows[:2])
    path.write_bytes(before + b"x" * torn_length)
    output = ScanOutput(path, LABELS, "jsonl")
    assert path.read_bytes() == before
    assert output.done == {str(Path(row["image"]).resolve()) for row in rows[:2]}
    output.close()


@pytest.mark.parametrize("length", [1, 65_536, 65_537, 150_000])
def test_a_file_holding_only_a_torn_line_is_emptied(tmp_path, length):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"{" * length)
    ScanOutput(path, LABELS, "jsonl").close()
    assert path.read_bytes() == b""


def test_a_csv_holding_one_torn_byte_is_emptied(tmp_path):
    path = tmp_path / "results.csv"
    path.write_bytes(b"i")  # the first byte of the header, and the scan died
    output = ScanOutput(path, LABELS, "csv")
    output.write_record(records(tmp_path)[0])
    output.close()
    assert images_in(path, "csv") == [records(tmp_path)[0]["image"]]


def test_a_line_that_is_no_record_is_named_by_its_number(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('not a record\n{"image": "a.png"}\n')
    with pytest.raises(Exception, match=r"results\.jsonl:1: not a scan record"):
        ScanOutput(path, LABELS, "jsonl")
