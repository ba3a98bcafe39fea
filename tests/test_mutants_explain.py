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
    as_json = measured.to_dict()  # what the benchmark writes: every curve and gap, as the attributes say
    for name in ("deletion", "deletion_random", "insertion", "insertion_random"):
        assert as_json[name] == list(getattr(measured, name))
    for name in ("deletion_gap", "insertion_gap", "deletion_gap_log_odds", "insertion_gap_log_odds"):
        assert as_json[name] == getattr(measured, name)
    assert as_json["fractions"] == list(test.fractions)


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


def test_the_colour_bar_is_matplotlibs_inferno_from_0_2_to_1_at_12_stops():
    """explain.COLOURS' own comment: matplotlib's "inferno" sampled at 12 points from 0.2 to 1, its darkest end
    left out. Read from matplotlib itself (the dev extra has it; the runtime doesn't)."""
    import numpy as np

    from fastvit_detect.explain import colour_stops

    matplotlib = pytest.importorskip("matplotlib")
    samples = matplotlib.colormaps["inferno"](np.linspace(0.2, 1, 12))[:, :3]
    assert colour_stops() == ["#" + "".join(f"{channel:02x}" for channel in np.rint(255 * rgb).astype(int))
                              for rgb in samples]


def test_a_heat_layers_opacity_may_be_up_to_1_and_not_more():
    import numpy as np

    from fastvit_detect.explain import heat_layer

    heat = np.array([[0.0, 1.0]])
    assert np.asarray(heat_layer(heat, 1.0, alpha=1))[0, 1, 3] == 255  # full heat at alpha 1: opaque
    for alpha in (0, 1.01, 2, float("nan")):
        with pytest.raises(InvalidOptionError, match="alpha"):
            heat_layer(heat, 1.0, alpha=alpha)


def test_a_model_resolution_map_lands_on_a_non_square_original_unchanged_where_the_grids_coincide():
    """Geometry.map_to_original samples the map at each original pixel's centre: with no resize or crop the
    original's pixel centres are the model's, so a map comes back unchanged, along both axes of a non-square
    input (40 wide, 20 high)."""
    import numpy as np

    from fastvit_detect.explain import Geometry

    geometry = Geometry((40, 20), (40, 20), (0, 0), (40, 20))
    heat = np.add.outer(np.arange(20, dtype=np.float32) * 100, np.arange(40, dtype=np.float32))  # row * 100 + column
    np.testing.assert_array_equal(geometry.map_to_original(heat), heat)


def test_cells_split_a_side_into_near_equal_whole_pixel_runs():
    """14 cells over 224 px are the ViT's own 16-px patches; 3 over 10 px round to 3, 4, 3."""
    import numpy as np

    from fastvit_detect.explain import _cell_edges

    np.testing.assert_array_equal(_cell_edges(224, 14), np.arange(0, 225, 16))
    np.testing.assert_array_equal(_cell_edges(10, 3), [0, 3, 7, 10])


def test_an_explanations_repr_leaves_out_its_pixels(vit_package):
    from conftest import sample_photos

    from fastvit_detect import Detector

    explanation = Detector.load(vit_package, variant="fp32", threads=1).explain(sample_photos()[0], grid=2)
    text = repr(explanation)
    assert "pixels" not in text and len(text) < 5_000


def test_an_explanations_time_counts_from_before_the_image_is_prepared(vit_package, monkeypatch):
    """Explanation.seconds (elapsed_ms in its JSON) is the whole call's: preparing the image (decoding, resizing)
    included, not only the model passes. A stand-in clock moves 5 s while the image is prepared."""
    from types import SimpleNamespace

    from conftest import sample_photos

    from fastvit_detect import Detector
    from fastvit_detect import explain as explain_module

    now = [100.0]
    monkeypatch.setattr(explain_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))  # explain's clock only
    real_prepare = explain_module.prepare_opened

    def slow_prepare(*args, **kwargs):
        now[0] += 5.0
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(explain_module, "prepare_opened", slow_prepare)
    detector = Detector.load(vit_package, variant="fp32", threads=1)
    explanation = explain_module.explain_opened(detector, detector.preprocessor.open(sample_photos()[0]), grid=2)
    assert explanation.seconds == 5.0


def test_rise_masks_on_a_grid_as_fine_as_the_image_have_no_room_to_shift():
    """A cell of one pixel leaves a shift of 0 only (RISE shifts by a random fraction of a cell, from 0): the
    masks are then the cells themselves, complementary pairs of 0s and 1s."""
    import numpy as np

    from fastvit_detect.explain import rise_masks

    masks = list(rise_masks((6, 6), grid=6, samples=8, seed=3))
    assert len(masks) == 8 and all(mask.shape == (6, 6) for mask in masks)
    for shown, hidden in zip(masks[::2], masks[1::2]):
        assert set(np.unique(shown)) <= {0.0, 1.0}
        np.testing.assert_array_equal(shown + hidden, np.ones((6, 6)))
