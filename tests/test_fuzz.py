"""The seeded decoder fuzz campaign (tests/fuzzing.py) run in CI, and the defects it found, kept as regressions.

The campaign runs a few hundred generated cases plus one of every hostile array, PIL image, object and bomb kind
in worker processes with a wall-time and an RSS limit. ``FASTVIT_FUZZ_SEED`` picks another seed; a larger run is
``python tests/fuzzing.py --cases 20000`` (see its docstring).
"""

from __future__ import annotations

import io
import os
import random

import fuzzing
import numpy as np
import pytest
from PIL import Image

import fastvit_detect
from fastvit_detect import ImageDecodeError, ImageTooLargeError, InputError, Prediction

CI_CASES = 500
SEED = int(os.environ.get("FASTVIT_FUZZ_SEED", "0"))
CI_INDICES = sorted({*range(CI_CASES), *fuzzing.coverage_indices()})


@pytest.fixture(scope="module")
def campaign(request, tmp_path_factory) -> fuzzing.Report:
    try:
        package = str(request.getfixturevalue("vit_package"))
    except pytest.skip.Exception:  # no torch to export the tiny package: the decoders are still fuzzed
        package = None
    settings = fuzzing.Settings(cases=CI_CASES, seed=SEED, workers=min(2, os.cpu_count() or 1), package=package,
                                extra=tuple(fuzzing.coverage_indices()))
    return fuzzing.run_campaign(settings, log_dir=tmp_path_factory.mktemp("fuzz-logs"))


def listing(report: fuzzing.Report, results: list[dict]) -> str:
    lines = [f"case {r['index']} ({r['format']} {r['family']} {r['item']} via {r['call']}/{r.get('delivery')}, "
             f"{r.get('detail', '')}): {r['outcome']}: {r.get('message', '')}\n{r.get('traceback', '')}"
             for r in results[:20]]
    replay = f"replay one with: python tests/fuzzing.py --seed {SEED} --replay INDEX"
    return "\n".join([*lines, "", replay, "", report.table()])


def test_every_case_is_counted_once(campaign):
    assert [result["index"] for result in campaign.results] == CI_INDICES
    assert sum(campaign.counts.values()) == len(CI_INDICES)


@pytest.mark.parametrize("failure", ["escaped:", "timeout", "memory", "crash:", "bad-output", "generator-error"])
def test_no_case_fails(campaign, failure):
    """0 exceptions outside FastVitDetectError, 0 hangs, 0 over the memory limit, 0 crashes."""
    failed = [result for result in campaign.results if result["outcome"].startswith(failure)]
    assert not failed, listing(campaign, failed)


def test_a_hostile_image_never_fails_its_neighbours(campaign):
    if campaign.settings.package is None:
        pytest.skip("no model package (torch isn't installed to export one)")
    batched = [result for result in campaign.results if result["call"] in ("predict_batch", "predict_iter")]
    assert len(batched) >= 50
    failed = [result for result in batched if result["outcome"].startswith(("neighbour-failed", "raised:"))]
    assert not failed, listing(campaign, failed)


def test_the_campaign_reaches_every_outcome_and_format(campaign):
    # A generator that only ever made unreadable bytes would pass the tests above while testing little.
    for outcome in ("ok", "ImageDecodeError", "ImageTooLargeError", "UnsupportedInputError", "EmptyImageError",
                    "ImageNotFoundError"):
        assert campaign.counts[outcome] > 0, outcome
    assert {seed.format for seed in fuzzing.seed_corpus()} <= {result["format"] for result in campaign.results}
    assert {"ok", "ImageDecodeError"} <= {r["outcome"] for r in campaign.results if r["family"] == "mutate"}


SERVER_CASES = 150


def test_the_servers_allowlist_under_fuzzing(tmp_path):
    """The server opens only its formats (``--formats server``): other formats' files and splices are refused by
    name or as unrecognised, never escaping, hanging or blowing the memory limit; its own formats still decode."""
    settings = fuzzing.Settings(cases=SERVER_CASES, seed=SEED, workers=min(2, os.cpu_count() or 1),
                                formats=list(fastvit_detect.preprocess.server_formats()))
    report = fuzzing.run_campaign(settings, log_dir=tmp_path)
    failed = [result for result in report.results if result["outcome"].startswith(fuzzing.FAILURES_PREFIXES)]
    assert not failed, listing(report, failed)
    refused = [r for r in report.results if r["outcome"] == "UnsupportedInputError" and "accepted here" in r["message"]]
    assert {r["format"] for r in refused} - set(settings.formats), "no file of another format was refused by name"
    assert {r["format"] for r in report.results if r["outcome"] == "ok"} & {"JPEG", "PNG", "WEBP"}


def test_the_harness_notices_hangs_memory_escapes_and_crashes(tmp_path):
    settings = fuzzing.Settings(cases=2, extra=(-1, -2, -3, -4), workers=2, wall_limit_s=5, rss_budget_kb=100 * 1024,
                                selftest=True)
    report = fuzzing.run_campaign(settings, log_dir=tmp_path)
    outcomes = {result["index"]: result["outcome"] for result in report.results}
    assert outcomes[-1] == "timeout"
    assert outcomes[-2] == "memory"
    assert outcomes[-3] == "escaped:RuntimeError"
    assert outcomes[-4] == "crash:SIGSEGV"
    assert not fuzzing.is_failure(outcomes[0]) and not fuzzing.is_failure(outcomes[1])  # workers were replaced


# --- the generator ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", fuzzing.seed_corpus(), ids=lambda seed: seed.name)
def test_each_seed_is_a_valid_image_of_its_format(seed):
    with Image.open(io.BytesIO(seed.data)) as image:
        assert image.format == seed.format
        size = image.size
    if seed.loads:
        assert fastvit_detect.load_image(seed.data).size in (size, size[::-1])  # EXIF may turn it
    else:  # EPS (refused), and formats Pillow only identifies here
        with pytest.raises(ImageDecodeError):
            fastvit_detect.load_image(seed.data)


# Formats whose declared size isn't the one Pillow reports: ICO/CUR take it from the embedded image, an animated
# AVIF from its track.
SIZE_FROM_ELSEWHERE = {"ico", "ico-bmp", "cur", "avif-animated"}


@pytest.mark.parametrize("seed", [seed for seed in fuzzing.seed_corpus() if seed.name not in SIZE_FROM_ELSEWHERE
                                  and fuzzing.set_dimensions(seed, 1, 1) is not None], ids=lambda seed: seed.name)
def test_dimension_edits_reach_the_declared_size(seed):
    data = fuzzing.set_dimensions(seed, 192, 160)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (192, 160)


def test_cases_are_a_function_of_seed_and_index(tmp_path):
    def built(seed: int, index: int) -> tuple[str, bytes]:
        the_plan, rng = fuzzing.plan(seed, index, with_model=True)
        case = fuzzing.build_case(the_plan, rng, context)
        case.close()
        return case.detail, case.data

    context = fuzzing.Context(fuzzing.saved(fuzzing.picture(), "PNG"), fuzzing.saved(fuzzing.picture(), "JPEG"),
                              tmp_path)
    indices = range(0, 400, 3)
    first = [built(SEED, index) for index in indices]
    assert first == [built(SEED, index) for index in indices]
    assert first != [built(SEED + 1, index) for index in indices]
    assert sum(bool(data) for _, data in first) > len(first) // 2


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", fuzzing.BOMB_KINDS)
def test_a_bomb_over_the_pixel_cap_is_refused_from_its_header(kind):
    data = fuzzing.bomb(kind, 10_001, 10_000)  # 100,010,000 pixels: just over the default cap
    with Image.open(io.BytesIO(data)) as image:
        assert image.size[0] * image.size[1] > fastvit_detect.DEFAULT_MAX_PIXELS
    with pytest.raises(ImageTooLargeError):
        fastvit_detect.load_image(data)


@pytest.mark.parametrize("kind", fuzzing.BOMB_KINDS)
def test_a_small_bomb_decodes_to_what_was_compressed(kind):
    pixels = np.asarray(fastvit_detect.load_image(fuzzing.bomb(kind, 300, 200)))
    assert pixels.shape == (200, 300, 3)
    flat = pixels.reshape(-1, 3)
    if kind == "bmp-rle8-eol":  # one pixel written per row, the rest padding
        flat = pixels[:, 1:].reshape(-1, 3)
    assert (flat == flat[0]).all()
    if kind in ("png-rgb", "png-rgba16", "tiff-deflate", "qoi-run", "gif-screen"):  # zeros in, zeros out
        assert not flat.any()


def test_mutations_change_bytes_deterministically():
    seed = next(seed for seed in fuzzing.seed_corpus() if seed.name == "png-rgb")
    for name, operation in fuzzing.MUTATIONS.items():
        changed = [operation(seed, seed.data, random.Random(index))[0] != seed.data for index in range(8)]
        assert any(changed), name
        assert operation(seed, seed.data, random.Random(3)) == operation(seed, seed.data, random.Random(3)), name


# --- regressions: defects the fuzzer found --------------------------------------------------------------------

HOSTILE_NAMES = {
    "name property raises": fuzzing.NameRaises,
    "__fspath__ raises RuntimeError": lambda: fuzzing.FspathRaises(RuntimeError("fspath")),
    "__fspath__ raises ValueError": lambda: fuzzing.FspathRaises(ValueError("fspath")),
    "released memoryview": fuzzing.released_memoryview,
}


@pytest.mark.parametrize("make", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_an_input_that_cant_be_named_is_still_a_typed_error(make):
    # These escaped as RuntimeError/ValueError: describe_source() ran outside the decode boundary.
    with pytest.raises(InputError) as raised:
        fastvit_detect.load_image(make())
    assert type(make()).__name__ in str(raised.value)


def test_a_pathlike_of_bytes_is_named_as_a_str():
    with pytest.raises(fastvit_detect.ImageNotFoundError) as raised:
        fastvit_detect.load_image(fuzzing.FspathReturns(b"/nowhere/\xff.png"))
    assert raised.value.source == os.fsdecode(b"/nowhere/\xff.png")


@pytest.mark.parametrize("make", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_an_unnameable_input_fails_alone_in_a_batch(vit_package, make):
    detector = fastvit_detect.Detector.load(vit_package, variant="fp32")
    good = np.full((32, 32, 3), 120, np.uint8)
    results = detector.predict_batch([good, make(), good], errors="return")
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    assert isinstance(results[1], InputError)
    streamed = list(detector.predict_iter([good, make(), good], errors="return"))
    assert isinstance(streamed[1], InputError) and isinstance(streamed[2], Prediction)
