"""What explain's survivors of the automatic mutation run showed untested: the ends of each option's range. The
ranges are the explanations guide's (grid 2-32, samples even 2-4,096, seed 0 to 2**63 - 1), not read from
explain.py."""

from __future__ import annotations

import pytest

from fastvit_detect.errors import InvalidOptionError
from fastvit_detect.explain import model_passes, resolve_options


@pytest.mark.parametrize(("method", "options", "passes"), [
    ("occlusion", {"grid": 2}, 1 + 4), ("occlusion", {"grid": 32}, 1 + 32 * 32),
    ("rise", {"samples": 2}, 1 + 2), ("rise", {"samples": 4096}, 1 + 4096),
    ("rise", {"seed": 0}, 1 + 16), ("rise", {"seed": 2**63 - 1}, 1 + 16), ("rise", {"grid": 2, "samples": 2}, 3)])
def test_each_end_of_an_options_range_is_taken(method, options, passes):
    resolved = resolve_options(method, options)
    assert {key: resolved[key] for key in options} == options
    assert model_passes(method, options) == passes


@pytest.mark.parametrize(("method", "options"), [
    ("occlusion", {"grid": 1}), ("occlusion", {"grid": 33}), ("rise", {"samples": 0}), ("rise", {"samples": 4098}),
    ("rise", {"seed": -1}), ("rise", {"seed": 2**63}), ("rise", {"grid": 1})])
def test_one_past_each_end_is_refused_naming_the_option(method, options):
    with pytest.raises(InvalidOptionError, match=next(iter(options))):
        resolve_options(method, options)
