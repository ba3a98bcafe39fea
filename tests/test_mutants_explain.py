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


def test_the_colour_scale_runs_from_its_first_stop_to_its_last():
    """colourise: heat 0 is the colour bar's first stop, heat 1 its last (colour_stops, shown under the map), NaN
    and values outside [0, 1] clipped."""
    import numpy as np

    from fastvit_detect.explain import colour_stops, colourise

    def css(rgb) -> str:
        return "#" + "".join(f"{int(np.rint(channel)):02x}" for channel in rgb)

    stops = colour_stops()
    low, high, below, above, missing = colourise(np.array([0.0, 1.0, -3.0, 7.0, np.nan]))
    assert (css(low), css(high), css(below), css(above), css(missing)) == (
        stops[0], stops[-1], stops[0], stops[-1], stops[0])


def test_a_target_cannot_be_changed():
    import dataclasses

    from fastvit_detect.explain import Target

    target = Target.resolve("Fake", ["Fake", "Real"], predicted="Real")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.label = "Real"  # type: ignore[misc]


def test_faithfulness_compares_deletion_with_random_deletion_and_insertion_with_random_insertion(vit_package):
    """Faithfulness.deletion_random is the mean of the random orders' deletion curves, insertion_random of their
    insertion curves (random_curves: (deletion, insertion), as RemovalTest.random_curves returns them)."""
    import numpy as np
    from conftest import sample_photos

    from fastvit_detect import Detector
    from fastvit_detect.explain import RemovalTest

    detector = Detector.load(vit_package, variant="fp32", threads=1)
    explanation = detector.explain(sample_photos()[0], grid=2)
    test = RemovalTest("blur")
    fractions = len(test.fractions)
    deletion = np.stack([np.full(fractions, 0.1), np.full(fractions, 0.3)])
    insertion = np.stack([np.full(fractions, 0.6), np.full(fractions, 1.0)])
    measured = test.measure(detector, explanation, random_curves=(deletion, insertion))
    assert measured.deletion_random == pytest.approx((0.2,) * fractions)
    assert measured.insertion_random == pytest.approx((0.8,) * fractions)


def test_the_colour_bars_caption_runs_up_the_panels_right_edge_beside_the_bar():
    """with_colour_bar's caption (the explanations guide: read bottom to top along the bar, as an axis title is):
    in the picture, its ink is a column of its own right of the bar and its labels, as tall as a line of text is
    long, centred on the bar, inside the canvas. Ink is found in the pixels, not in the layout code."""
    import numpy as np
    from PIL import Image

    from fastvit_detect.explain import with_colour_bar

    picture = Image.new("RGB", (200, 280), (128, 128, 128))
    drawn = with_colour_bar(picture, 0.5, "evidence for Fake")
    assert drawn.height == 280 and drawn.width > 200
    panel = np.asarray(drawn)[:, 200:]
    assert np.array_equal(np.asarray(drawn)[:, :200], np.asarray(picture))  # the picture itself untouched
    ink = panel.max(axis=2) < 100
    columns = np.flatnonzero(ink.any(axis=0))
    groups = np.split(columns, np.flatnonzero(np.diff(columns) > 3) + 1)  # the bar with its labels | the caption
    assert len(groups) == 2, [(int(group[0]), int(group[-1])) for group in groups]
    bar, caption = groups[0][:1], groups[1]  # the bar's outline: its first column of ink

    def rows(group):
        found = np.flatnonzero(ink[:, group].any(axis=1))
        return int(found[0]), int(found[-1])

    bar_top, bar_bottom = rows(bar)
    caption_top, caption_bottom = rows(caption)
    caption_width = int(caption[-1] - caption[0] + 1)
    assert caption_bottom - caption_top > 4 * caption_width  # a line of text standing on its end
    assert abs((caption_top + caption_bottom) / 2 - (bar_top + bar_bottom) / 2) <= 5
    assert caption[-1] < panel.shape[1] - 1  # inside the canvas, with a margin


def test_a_removal_tests_grid_side_may_be_2_to_256():
    """The explanations guide: RemovalTest(cells=14) by default, a grid side from 2 to 256."""
    from fastvit_detect.explain import RemovalTest

    assert RemovalTest().cells == 14
    for cells in (2, 256):
        assert RemovalTest(cells=cells).cells == cells
    for cells in (1, 257):
        with pytest.raises(InvalidOptionError, match="cells"):
            RemovalTest(cells=cells)
