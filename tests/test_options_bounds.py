"""The option checks at their exact edges: every bound inclusive where the docstring says "from ... to", exclusive
where it says "above", the error naming the option and its bound, and text lengths past which a number isn't
parsed at all (a 10,000-digit "number" on a command line is an attack, not a value)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from fastvit_detect.options import check_finite, check_whole, finite_number, positive_int, whole_number


def test_check_whole_edges_and_messages():
    assert check_whole("n", 1, 1, 5) == 1 and check_whole("n", 5, 1, 5) == 5
    assert check_whole("n", np.int64(3), 1, 5) == 3 and type(check_whole("n", np.int64(3), 1, 5)) is int
    assert check_whole("n", 10**30, 1) == 10**30  # no upper bound when none is given
    with pytest.raises(ValueError, match=r"^n must be a whole number from 1 to 5, got 6$"):
        check_whole("n", 6, 1, 5)
    with pytest.raises(ValueError, match=r"^n must be a whole number >= 1, got 0$"):
        check_whole("n", 0, 1)
    for bad in (True, 2.0, "2", None, math.nan):
        with pytest.raises(ValueError, match="^n must be"):
            check_whole("n", bad, 1, 5)
    with pytest.raises(KeyError):
        check_whole("n", 0, 1, error=KeyError)


def test_check_finite_edges_and_messages():
    assert check_finite("x", 0.5, 0.5, 2.0) == 0.5 and check_finite("x", 2.0, 0.5, 2.0) == 2.0
    assert check_finite("x", 1, 0.5, 2.0) == 1.0 and type(check_finite("x", 1, 0.5, 2.0)) is float
    for bad in (0.49, 2.01, math.inf, -math.inf, math.nan, True, "1", None):
        with pytest.raises(ValueError, match=r"^x must be a finite number from 0.5 to 2, got "):
            check_finite("x", bad, 0.5, 2.0)


def test_whole_number_flags():
    parse = whole_number(2, 10)
    assert parse("2") == 2 and parse(" 10 ") == 10
    for bad, message in (("1", "from 2 to 10, got 1"), ("11", "from 2 to 10, got 11"), ("2.0", "got '2.0'"),
                         ("", "got ''"), ("1e3", "got '1e3'")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(bad)
    assert parse.__name__ == "whole number"


def test_whole_number_reads_30_characters_at_most():
    parse = whole_number(0, 10**40)
    assert parse("0" * 29 + "7") == 7  # 30 characters: read
    assert parse(" " * 28 + "7 ") == 7
    with pytest.raises(argparse.ArgumentTypeError, match="expected a whole number, got"):
        parse("0" * 30 + "7")  # 31 characters: not read at all


def test_finite_number_flags_inclusive_and_exclusive():
    inclusive = finite_number(0.0, 1.0)
    assert inclusive("0") == 0.0 and inclusive("1") == 1.0 and inclusive("0.25") == 0.25
    exclusive = finite_number(0.0, 1.0, low_inclusive=False)
    assert exclusive("1e-9") == 1e-9 and exclusive("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number above 0 up to 1, got 0"):
        exclusive("0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number from 0 up to 1, got -0.5"):
        inclusive("-0.5")
    for parse in (inclusive, exclusive):
        with pytest.raises(argparse.ArgumentTypeError, match="up to 1, got 1.5"):
            parse("1.5")
        for bad in ("nan", "inf", "-inf", "x", ""):
            with pytest.raises(argparse.ArgumentTypeError, match="expected a finite number"):
                parse(bad)
    assert inclusive.__name__ == "number"


def test_finite_number_reads_40_characters_at_most():
    parse = finite_number(0.0, 10.0)
    assert parse("0" * 39 + "5") == 5.0  # 40 characters: read
    with pytest.raises(argparse.ArgumentTypeError, match="expected a finite number"):
        parse("0" * 40 + "5")


def test_positive_int_is_a_c_int_from_1():
    assert positive_int("1") == 1 and positive_int(str(2**31 - 1)) == 2**31 - 1
    for bad in ("0", str(2**31), "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="from 1 to 2,147,483,647"):
            positive_int(bad)
