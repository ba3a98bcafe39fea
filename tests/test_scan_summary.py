"""scan's closing line, word for word: what a user reads after a long scan (counts, rate, labels, resume)."""

from __future__ import annotations

from collections import Counter

from fastvit_detect.scan import ScanSummary


def test_a_fresh_summary_counts_nothing():
    assert ScanSummary().describe() == "0 image(s) found; 0 classified in 0.0s (0.0 images/s): none; 0 failed"


def test_a_resumed_scan_says_what_it_skipped_and_its_rate():
    summary = ScanSummary(found=5, already_done=2, classified=2, failed=1, seconds=4.0,
                          labels=Counter({"Real": 1, "Fake": 1}))
    assert summary.describe() == ("5 image(s) found; 2 already in the output, skipped; 2 classified in 4.0s "
                                  "(0.5 images/s): Fake 1, Real 1; 1 failed")


def test_no_rate_without_time():
    summary = ScanSummary(found=1, classified=1, seconds=0.0, labels=Counter({"Fake": 1}))
    assert summary.describe() == "1 image(s) found; 1 classified in 0.0s (0.0 images/s): Fake 1; 0 failed"


def test_a_rate_over_less_than_a_second():
    summary = ScanSummary(found=1, classified=1, seconds=0.5, labels=Counter({"Real": 1}))
    assert "(2.0 images/s)" in summary.describe()
