"""Model packages on the Hugging Face Hub, against a fake Hub on 127.0.0.1 (tests/fakehub.py): pull by id, cache
and offline use, revisions, verification, typed errors, hostile repositories, push with a model card.

In-process tests pass ``endpoint=`` and ``cache_dir=`` (huggingface_hub reads HF_ENDPOINT and HF_HUB_CACHE once,
when it's imported); the command-line tests run a subprocess with the environment a user would set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_photos

hub_constants = pytest.importorskip("huggingface_hub.constants")  # the hub extra
pytest.importorskip("uvicorn")  # the serve extra runs the fake Hub

from fakehub import LISTING, READ_TOKEN, WRITE_TOKEN, FakeHub  # noqa: E402

from fastvit_detect import Detector, ModelPackage  # noqa: E402
from fastvit_detect.errors import (  # noqa: E402
    ChecksumMismatchError,
    HubAuthError,
    HubDownloadError,
    HubError,
    HubOfflineError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubTimeoutError,
    InvalidPackageError,
    NotAModelPackageError,
    PackageNotFoundError,
)
from fastvit_detect.hub import HubReference, fetch, parse_model_reference, push  # noqa: E402
from fastvit_detect.package import CONFIG_FILE, MANIFEST_FILE, PREPROCESSOR_FILE  # noqa: E402

REPO = "deepfakes/vit-onnx"
METADATA = {MANIFEST_FILE, CONFIG_FILE, PREPROCESSOR_FILE}


def package_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


def manifest_files(directory: Path, variant: str) -> set[str]:
    """The files a variant loads, read from the manifest itself (not through the code under test)."""
    entry = json.loads((directory / MANIFEST_FILE).read_text())["variants"][variant]
    return {entry["file"], entry["data_file"]}


def logits(detector: Detector) -> np.ndarray:
    return np.stack([p.logits for p in detector.predict_batch(sample_photos()[:3])])


@pytest.fixture(autouse=True)
def no_xet(monkeypatch):
    """The fake Hub speaks LFS, not Xet (which huggingface_hub >= 1.0 uploads with whenever hf_xet is installed)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True, raising=False)


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture
def published(hub, vit_package) -> str:
    return hub.add_commit(REPO, package_files(vit_package))


def pull(hub: FakeHub, cache: Path, repo_id: str = REPO, **options) -> Detector:
    return Detector.from_pretrained(repo_id, cache_dir=cache, endpoint=hub.url, **options)


# --- pulling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["auto", "fp32"])
def test_pull_downloads_only_the_chosen_variant_and_predicts_as_the_local_package(hub, cache, published, vit_package,
                                                                                  variant):
    detector = pull(hub, cache, variant=variant)
    chosen = json.loads((vit_package / MANIFEST_FILE).read_text())["default_variant"] if variant == "auto" else variant
    assert detector.variant.name == chosen
    assert set(hub.downloads()) == METADATA | manifest_files(vit_package, chosen)
    assert len(hub.downloads()) == len(set(hub.downloads()))  # each file once
    local = Detector.load(vit_package, variant=chosen)
    np.testing.assert_array_equal(logits(detector), logits(local))
    assert str(detector.package.root).startswith(str(cache))  # the standard HF cache layout, under cache_dir


def test_second_pull_is_served_from_the_cache_with_the_server_stopped(cache, vit_package):
    with FakeHub() as hub:
        hub.add_commit(REPO, package_files(vit_package))
        first = logits(pull(hub, cache))
    # The server is gone: offline mode asks nothing; a normal call finds the Hub unreachable and uses the cache.
    np.testing.assert_array_equal(logits(pull(hub, cache, local_files_only=True)), first)
    np.testing.assert_array_equal(logits(pull(hub, cache)), first)
    with pytest.raises(HubOfflineError, match="isn't in the cache"):
        pull(hub, cache, variant="fp32", local_files_only=True)  # another variant was never downloaded


def test_revision_pinning(hub, cache, packages):
    first = hub.add_commit(REPO, package_files(packages["vit"]))
    hub.add_commit(REPO, package_files(packages["vit"]), branch="v1")
    hub.add_commit(REPO, package_files(packages["legacy-vit"]))  # main moves on to other weights
    old, new = logits(Detector.load(packages["vit"])), logits(Detector.load(packages["legacy-vit"]))
    assert not np.array_equal(old, new)
    np.testing.assert_array_equal(logits(pull(hub, cache)), new)
    np.testing.assert_array_equal(logits(pull(hub, cache, revision=first)), old)
    np.testing.assert_array_equal(logits(pull(hub, cache, revision="v1")), old)
    with pytest.raises(HubRevisionNotFoundError, match="no revision 'v9'"):
        pull(hub, cache, revision="v9")


def test_a_corrupted_download_is_refused_and_force_download_repairs_it(hub, cache, published, vit_package):
    weights = sorted(manifest_files(vit_package, "int8"))[-1]  # model_quantized.onnx_data, by name order
    hub.tamper[weights] = lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]  # same size
    with pytest.raises(ChecksumMismatchError, match="force_download=True"):
        pull(hub, cache)
    del hub.tamper[weights]
    with pytest.raises(ChecksumMismatchError):  # the damaged blob stays cached until asked for afresh
        pull(hub, cache)
    np.testing.assert_array_equal(logits(pull(hub, cache, force_download=True)), logits(Detector.load(vit_package)))


def test_what_a_killed_download_left_is_removed_by_the_next(hub, cache, published, vit_package):
    pull(hub, cache)
    weights = next(cache.rglob("model_quantized.onnx_data")).resolve()
    stale, live = (weights.with_name(f".{weights.name}.{tag}.incomplete") for tag in ("killed", "running"))
    for partial in (stale, live):
        partial.write_bytes(b"\0" * 1000)
    os.utime(stale, (time.time() - 3 * 3600, time.time() - 3 * 3600))  # older than any deadline
    pull(hub, cache, force_download=True)
    assert not stale.exists() and live.exists()  # one written a moment ago may be another process's download


def test_a_partial_download_is_a_typed_error(hub, cache, published, vit_package):
    hub.tamper[sorted(manifest_files(vit_package, "int8"))[-1]] = lambda data: data[: len(data) // 2]
    with pytest.raises(HubDownloadError, match="model_quantized.onnx_data"):
        pull(hub, cache)


def test_missing_repo_private_repo_and_gated_repo(hub, cache, vit_package):
    files = package_files(vit_package)
    hub.add_commit("someone/private", files, private=True)
    hub.add_commit("someone/gated", files, gated=True)
    with pytest.raises(HubRepoNotFoundError, match="no such model repository") as missing:
        pull(hub, cache, "nobody/nothing")
    assert isinstance(missing.value, PackageNotFoundError) and missing.value.repo_id == "nobody/nothing"
    with pytest.raises(HubAuthError, match="HTTP 401"):
        pull(hub, cache, "someone/private")
    with pytest.raises(HubAuthError, match="HTTP 401"):
        pull(hub, cache, "someone/private", token="hf_wrong")
    with pytest.raises(HubAuthError, match="gated"):
        pull(hub, cache, "someone/gated")
    assert pull(hub, cache, "someone/private", token=READ_TOKEN).labels == ["Fake", "Real"]


def test_network_down_with_nothing_cached(cache):
    with FakeHub() as hub:
        pass  # started and stopped: its port now refuses connections
    with pytest.raises(HubOfflineError, match="can't be reached.*isn't in the cache") as refused:
        pull(hub, cache)
    with pytest.raises(HubOfflineError, match="local_files_only"):
        pull(hub, cache, local_files_only=True)
    # The host and the cause in one line, not requests' and urllib3's reprs of their connection objects.
    message = str(refused.value)
    assert f"the Hub at {hub.url.removeprefix('http://')} can't be reached: Connection refused" in message, message
    assert "\n" not in message and "<" not in message and "object at 0x" not in message and "Pool" not in message


def test_a_pytorch_checkpoint_repo_says_how_to_export_it(hub, cache, checkpoints):
    hub.add_commit("sakshamkr1/deepfake_vit", package_files(checkpoints["vit"]))
    with pytest.raises(NotAModelPackageError, match="fastvit-detect export sakshamkr1/deepfake_vit"):
        pull(hub, cache, "sakshamkr1/deepfake_vit")
    assert set(hub.downloads()) == set()  # told from the listing alone


def test_an_optimum_export_without_manifest_loads_unverified(hub, cache, vit_package):
    files = package_files(vit_package)
    del files[MANIFEST_FILE]
    hub.add_commit("optimum/vit", files)
    detector = pull(hub, cache, "optimum/vit")
    assert detector.package.manifest is None and detector.variant.sha256 is None
    assert set(hub.downloads()) == {CONFIG_FILE, PREPROCESSOR_FILE, *manifest_files(vit_package, "int8")}
    np.testing.assert_array_equal(logits(detector), logits(Detector.load(vit_package, variant="int8")))


def test_fetch_without_a_selection_downloads_metadata_only(hub, cache, published, vit_package):
    fetched = fetch(REPO, cache_dir=cache, endpoint=hub.url)
    assert fetched.commit == published and set(hub.downloads()) == METADATA
    assert set(fetched.package.variants) == set(json.loads((vit_package / MANIFEST_FILE).read_text())["variants"])


# --- hostile repositories -----------------------------------------------------------------------------------


def _with_manifest(vit_package: Path, change) -> dict[str, bytes]:
    files = package_files(vit_package)
    manifest = json.loads(files[MANIFEST_FILE])
    change(manifest)
    files[MANIFEST_FILE] = json.dumps(manifest).encode()
    return files


def test_a_manifest_naming_a_path_outside_the_package_fetches_nothing_more(hub, cache, vit_package):
    def escape(manifest):
        manifest["variants"]["int8"]["file"] = "../../../../../../etc/passwd"
    hub.add_commit(REPO, _with_manifest(vit_package, escape))
    with pytest.raises(InvalidPackageError, match="plain file name"):
        pull(hub, cache)
    assert set(hub.downloads()) == METADATA
    assert not any(".." in path or "passwd" in path for _method, path in hub.requests)


@pytest.mark.parametrize("manifest, error", [
    (b"\xff\xfe garbage" * 10, "isn't valid JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (b"{" * 100_000, "isn't valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "isn't valid JSON"),  # nesting that would blow the parser's stack
    (b" " * (17 * 1024 * 1024) + b"{}", "not downloading it"),  # too large to fetch: refused from the listing
])
def test_garbage_and_huge_manifests_are_refused(hub, cache, vit_package, manifest, error):
    files = package_files(vit_package)
    files[MANIFEST_FILE] = manifest
    hub.add_commit(REPO, files)
    with pytest.raises(InvalidPackageError, match=error):
        pull(hub, cache)
    assert not set(hub.downloads()) - METADATA  # no graph was fetched for a package that doesn't check out
    if len(manifest) > 16 * 1024 * 1024:
        assert MANIFEST_FILE not in hub.downloads()


def test_a_cached_file_linked_out_of_the_cache_is_refused(hub, cache, published, tmp_path):
    detector = pull(hub, cache)
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes((detector.package.root / CONFIG_FILE).read_bytes())
    (detector.package.root / CONFIG_FILE).unlink()
    (detector.package.root / CONFIG_FILE).symlink_to(outside)  # the same bytes, but not the cache's own blob
    with pytest.raises(InvalidPackageError, match="resolves outside"):
        pull(hub, cache, local_files_only=True)


def test_a_file_of_another_size_than_the_manifest_says_is_not_downloaded(hub, cache, vit_package):
    files = package_files(vit_package)
    weights = sorted(manifest_files(vit_package, "int8"))[-1]
    files[weights] += b"\0" * 4096  # a repository whose files don't match its manifest
    hub.add_commit(REPO, files)
    with pytest.raises(ChecksumMismatchError, match="not downloading it"):
        pull(hub, cache)
    assert weights not in hub.downloads()


@pytest.mark.parametrize("listing", [
    lambda answer: b"<html>Service temporarily unavailable</html>",
    lambda answer: {**answer, "sha": "../../../../tmp/escape"},
    lambda answer: {**answer, "siblings": "not a list"},
])
def test_a_listing_that_makes_no_sense_is_a_typed_error(hub, cache, published, listing):
    hub.listing = listing
    with pytest.raises(HubDownloadError):
        pull(hub, cache)
    assert hub.downloads() == []


def test_a_revision_that_would_leave_the_cache_is_refused(hub, cache, published):
    with pytest.raises(HubRevisionNotFoundError):
        pull(hub, cache, revision="../../../escape")
    assert hub.requests == [] and not (cache.parent / "escape").exists()


@pytest.fixture
def short_timeouts(monkeypatch):
    """Timeouts of 1 s and huggingface_hub's retry pauses skipped: the attempts still happen, only faster."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    monkeypatch.setattr(hub_constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(hub_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    no_pause = types.SimpleNamespace(sleep=lambda _seconds: None, time=__import__("time").time)
    monkeypatch.setattr(_http, "time", no_pause)
    monkeypatch.setattr(file_download, "time", no_pause, raising=False)


def _bounded(call, seconds: float = 120) -> BaseException | None:
    """Run ``call`` in a thread that must end: a hang fails the test instead of stalling the suite."""
    outcome: list[BaseException | None] = []

    def run():
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), "the call hung"
    return outcome[0]


@pytest.mark.parametrize("route", ["model_info", "cdn"])
def test_a_server_that_stops_answering_gives_a_typed_error(hub, cache, published, short_timeouts, route):
    hub.hang.add(route)
    error = _bounded(lambda: pull(hub, cache))
    assert isinstance(error, HubOfflineError) and "Timeout" in str(error), error


# --- servers that lie or crawl ------------------------------------------------------------------------------


def _cached_bytes(cache: Path) -> dict[str, int]:
    return {str(path.relative_to(cache)): path.stat().st_size for path in cache.rglob("*")
            if path.is_file() and not path.is_symlink()}


@pytest.mark.parametrize("kind", ["manifest", "weights"])
def test_a_hub_sending_more_than_it_announced_is_cut_off_at_the_announced_size(hub, cache, published, vit_package,
                                                                               kind):
    name = MANIFEST_FILE if kind == "manifest" else sorted(manifest_files(vit_package, "int8"))[-1]
    announced = (vit_package / name).stat().st_size
    hub.oversend[name] = 64 * 1024 * 1024  # HEAD says the true size; the body goes on for 64 MiB
    with pytest.raises(HubDownloadError, match=f"more of {name} than the {announced:,} bytes announced"):
        pull(hub, cache)
    cached = _cached_bytes(cache)
    assert max(cached.values(), default=0) <= max(path.stat().st_size for path in vit_package.iterdir()), cached
    assert not any(name.endswith(".incomplete") for name in cached), cached  # no partial file left behind
    assert sum(cached.values()) < 1024 * 1024, cached
    assert hub.streamed[name] < 32 * 1024 * 1024  # the client hung up: only what socket buffers held got out


def test_a_trickling_hub_meets_a_deadline_naming_the_file_the_host_and_the_deadline(hub, cache, published,
                                                                                     short_timeouts):
    hub.trickle[CONFIG_FILE] = 0.2  # 655 bytes: over two minutes, though no single read waits a second
    started = time.monotonic()
    error = _bounded(lambda: pull(hub, cache), seconds=60)
    elapsed = time.monotonic() - started
    assert isinstance(error, HubTimeoutError) and isinstance(error, HubOfflineError), error
    host = hub.url.removeprefix("http://")
    assert f"downloading {CONFIG_FILE} from {host} didn't finish within its deadline of 6 s" in str(error), error
    assert elapsed < 30  # 6 x the 1 s read timeout, plus the file's size at 100 kB/s: a bound, where none was
    assert not any(name.endswith(".incomplete") for name in _cached_bytes(cache))
    assert hub.streamed[CONFIG_FILE] < 100


def test_a_listing_that_trickles_or_never_ends_is_cut_off(hub, cache, published, short_timeouts):
    hub.trickle[LISTING] = 0.2
    started = time.monotonic()
    error = _bounded(lambda: pull(hub, cache), seconds=60)
    assert time.monotonic() - started < 30  # unbounded, its 1.5 kB take five minutes
    host = hub.url.removeprefix("http://")
    assert isinstance(error, HubOfflineError), error  # too slow: as if unreachable, and the cache is asked
    assert f"the file listing from {host} didn't finish within its deadline of 6 s" in str(error), error
    assert "isn't in the cache" in str(error)
    del hub.trickle[LISTING]
    hub.oversend[LISTING] = 64 * 1024 * 1024
    with pytest.raises(HubDownloadError, match="sent more of the file listing than the 16,777,216 bytes it may"):
        pull(hub, cache)
    assert hub.streamed[LISTING] < 48 * 1024 * 1024


def test_a_server_trickling_its_headers_meets_the_deadline_too(cache, short_timeouts):
    """The watchdog shuts the connection whatever the exchange waits for: here the status line and headers."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle_headers():
        connection, _ = listener.accept()
        with connection:
            for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 10_000:
                if stop.wait(0.2):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    server = threading.Thread(target=trickle_headers, daemon=True)
    server.start()
    try:
        error = _bounded(lambda: Detector.from_pretrained(REPO, cache_dir=cache,
                                                          endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}"),
                         seconds=25)  # the deadline is 6 s; unbounded, the headers take half an hour
    finally:
        stop.set()
        listener.close()
    assert isinstance(error, HubOfflineError) and "didn't finish within its deadline of 6 s" in str(error), error


def test_serve_with_a_trickling_hub_fails_at_start_instead_of_hanging(cache, vit_package):
    with FakeHub() as hub:
        hub.add_commit(REPO, package_files(vit_package))
        hub.trickle[CONFIG_FILE] = 0.5
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "HF_HUB_DOWNLOAD_TIMEOUT": "1", "HF_HUB_ETAG_TIMEOUT": "1"}
        started = time.monotonic()
        served = _cli(["serve", "--model", REPO, "--port", "0"], env)
    assert served.returncode == 2, (served.stdout, served.stderr)
    assert "didn't finish within its deadline" in served.stderr and "Traceback" not in served.stderr
    assert time.monotonic() - started < 60  # unbounded, 655 bytes at 0.5 s each take 5.5 minutes


@pytest.mark.parametrize("location", ["ftp://127.0.0.1:1/x", "file://localhost/etc/hostname"])
def test_a_hub_pointing_a_download_at_a_local_file_or_another_scheme_is_refused(hub, cache, published, vit_package,
                                                                               location):
    weights = sorted(manifest_files(vit_package, "int8"))[-1]
    hub.relocate[weights] = location
    with pytest.raises(HubDownloadError, match="isn't an http\\(s\\) address"):
        pull(hub, cache)
    assert not any(path.name.startswith("model_quantized.onnx_data") for path in cache.rglob("*"))


# --- configs are vouched for -------------------------------------------------------------------------------


def test_a_tampered_cached_config_is_refused_and_force_download_repairs_it(hub, cache, published, vit_package):
    honest = logits(pull(hub, cache))
    processor = next(cache.rglob(PREPROCESSOR_FILE)).resolve()  # the blob the snapshot links to
    config = json.loads(processor.read_text())
    config.update(image_mean=[0.3, 0.3, 0.3], image_std=[0.9, 0.9, 0.9])  # accepted ranges: only sha256 tells
    processor.write_text(json.dumps(config))
    for options in ({"local_files_only": True}, {}):
        with pytest.raises(ChecksumMismatchError, match=f"{PREPROCESSOR_FILE} .*the manifest says.*force_download"):
            pull(hub, cache, **options)
    np.testing.assert_array_equal(logits(pull(hub, cache, force_download=True)), honest)


def test_a_repository_serving_a_config_its_manifest_doesnt_vouch_for_fetches_no_graph(hub, cache, published):
    hub.tamper[PREPROCESSOR_FILE] = lambda data: data.replace(b"0.5", b"0.4")  # valid, the same size: only sha256
    with pytest.raises(ChecksumMismatchError, match=f"{PREPROCESSOR_FILE} has sha256 .* the manifest says"):
        pull(hub, cache)
    assert set(hub.downloads()) <= METADATA  # refused before choosing a variant


# --- publishing ---------------------------------------------------------------------------------------------


def test_push_then_pull_gives_the_same_predictions(hub, cache, vit_package):
    pushed = push(vit_package, "me/pushed", token=WRITE_TOKEN, endpoint=hub.url)
    local_manifest = json.loads((vit_package / MANIFEST_FILE).read_text())
    wanted = {CONFIG_FILE, PREPROCESSOR_FILE, MANIFEST_FILE, "README.md",
              *(name for variant in local_manifest["variants"] for name in manifest_files(vit_package, variant))}
    assert set(pushed.files) == wanted
    tree = hub.repos["me/pushed"].commits[pushed.commit]
    assert set(tree) - {".gitattributes"} == wanted
    # The published manifest vouches for the configs as well, and the card says exactly that.
    assert {entry["file"] for entry in json.loads(tree[MANIFEST_FILE])["configs"]} == {CONFIG_FILE, PREPROCESSOR_FILE}
    assert b"every file it reads (`config.json`, `preprocessor_config.json`, the variant's graph" in tree["README.md"]
    assert any(method == "PUT" for method, _path in hub.requests)  # the graphs went through LFS
    for variant in ("auto", "fp32"):
        np.testing.assert_array_equal(logits(pull(hub, cache, "me/pushed", variant=variant)),
                                      logits(Detector.load(vit_package, variant=variant)))


def test_push_publishes_no_local_path(hub, package_copy):
    # Older exporters recorded the checkpoint's local path in the manifest.
    source = "/home/builder/secret-project/checkpoints/vit"
    manifest = json.loads((package_copy / MANIFEST_FILE).read_text())
    manifest["source"]["model"] = source
    (package_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    pushed = push(package_copy, "me/pushed", token=WRITE_TOKEN, endpoint=hub.url)
    tree = hub.repos["me/pushed"].commits[pushed.commit]
    for name in ("README.md", MANIFEST_FILE):
        assert b"/home/builder" not in tree[name] and b"secret-project" not in tree[name]
    assert json.loads(tree[MANIFEST_FILE])["source"]["model"] == "vit"
    # The card's metadata as the Hub's YAML validation parsed it: a local checkpoint isn't a Hub model to link.
    assert hub.cards == [{"library_name": "fastvit-detect", "pipeline_tag": "image-classification",
                          "tags": ["onnx", "deepfake-detection", "fastvit-detect"]}]


def test_push_to_a_branch_and_a_private_repo(hub, cache, vit_package):
    push(vit_package, "me/private", private=True, revision="candidate", token=WRITE_TOKEN, endpoint=hub.url)
    assert hub.repos["me/private"].private and "candidate" in hub.repos["me/private"].branches
    with pytest.raises(HubAuthError):
        pull(hub, cache, "me/private", revision="candidate")
    detector = pull(hub, cache, "me/private", revision="candidate", token=READ_TOKEN)
    np.testing.assert_array_equal(logits(detector), logits(Detector.load(vit_package)))


def test_push_refuses_without_write_access_and_refuses_a_corrupt_package(hub, vit_package, package_copy):
    with pytest.raises(HubAuthError):
        push(vit_package, "me/pushed", endpoint=hub.url)
    with pytest.raises(HubAuthError):
        push(vit_package, "me/pushed", token=READ_TOKEN, endpoint=hub.url)
    weights = package_copy / sorted(manifest_files(package_copy, "fp32"))[-1]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        push(package_copy, "me/pushed", token=WRITE_TOKEN, endpoint=hub.url)
    assert "me/pushed" not in hub.repos  # nothing was published, not even the repository
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    processor = package_copy / PREPROCESSOR_FILE
    processor.write_text(processor.read_text().replace("0.5", "0.4"))  # a config is vouched for like the weights
    with pytest.raises(ChecksumMismatchError, match=PREPROCESSOR_FILE):
        push(package_copy, "me/pushed", token=WRITE_TOKEN, endpoint=hub.url)
    assert "me/pushed" not in hub.repos


def test_push_refuses_what_isnt_a_package_of_its_own(hub, package_copy, tmp_path):
    not_a_directory = tmp_path / "package.txt"
    not_a_directory.write_text("not a package")
    with pytest.raises(PackageNotFoundError):
        push(not_a_directory, "me/pushed", token=WRITE_TOKEN, endpoint=hub.url)
    weights = package_copy / sorted(manifest_files(package_copy, "fp32"))[-1]
    outside = tmp_path / "weights-elsewhere"
    weights.rename(outside)
    weights.symlink_to(outside)  # the right bytes, linked from outside the package
    with pytest.raises(InvalidPackageError, match="resolves outside"):
        push(package_copy, "me/pushed", token=WRITE_TOKEN, endpoint=hub.url)
    assert "me/pushed" not in hub.repos


def test_model_card(package_copy):
    from fastvit_detect.modelcard import model_card

    manifest_path = package_copy / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["model"] = "sakshamkr1/deepfake_vit"
    manifest["variants"]["int8"]["validation"] = {"images": 14, "max_abs_logit_diff": 0.0123,
                                                  "max_abs_probability_diff": 0.00456, "top1_agreement": 0.9286}
    manifest["intended_use"] = "demo only: trained on synthetic images"
    manifest["description"] = "---\n# Injected heading\n```\nlibrary_name: evil"  # free text can't restructure it
    manifest_path.write_text(json.dumps(manifest))
    card = model_card(ModelPackage.open(package_copy), "me/detector")
    assert "\ndemo only: trained on synthetic images\n" in card
    assert card.count("---\n") == 2 and "\n# Injected" not in card
    assert [line for line in card.splitlines() if line.startswith("library_name")] == ["library_name: fastvit-detect"]
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert front.splitlines() == ["library_name: fastvit-detect", "pipeline_tag: image-classification",
                                  'base_model: "sakshamkr1/deepfake_vit"', "tags:", "- onnx", "- deepfake-detection",
                                  "- fastvit-detect"]
    usage = body.split("```python\n")[1].split("```")[0].splitlines()
    assert usage[1:] == ["detector = Detector.from_pretrained('me/detector')",
                         'print(detector.predict("face.jpg").label)']
    assert "| 0 | Fake |" in body and "| 1 | Real |" in body
    int8_row = next(line for line in body.splitlines() if line.startswith("| int8"))
    assert "(default)" in int8_row and "0.0123" in int8_row and "0.00456" in int8_row and "92.86 %" in int8_row
    assert "| 14 |" in int8_row


# --- the command line ---------------------------------------------------------------------------------------


def test_model_references():
    assert parse_model_reference("hf://org/name@v1") == HubReference("org/name", "v1")
    assert parse_model_reference("hf://gpt2") == HubReference("gpt2")
    assert parse_model_reference("org/name") == HubReference("org/name")
    assert parse_model_reference("org/name@3f2a") == HubReference("org/name", "3f2a")
    for local in ("name", "./org/name", "/abs/path", "a/b/c", "org/name@", "org/../x", "a" * 1000 + "/b",
                  "org/name@" + "v" * 1000, "org/name@../../x", "org/name@a b"):
        assert parse_model_reference(local) is None, local
    with pytest.raises(HubRepoNotFoundError):
        parse_model_reference("hf://not a repo")


def test_an_existing_directory_is_always_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_model_reference("org/name") is None
    assert parse_model_reference("hf://org/name") == HubReference("org/name")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastvit_detect", *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "HF_HUB_DISABLE_XET": "1", **env})


def test_cli_predicts_with_a_hub_id_then_offline(cache, vit_package):
    photo = str(sample_photos()[0])
    local = _cli(["predict", "--json", "--model", str(vit_package), photo], {})
    assert local.returncode == 0, local.stderr
    with FakeHub() as hub:
        hub.add_commit(REPO, package_files(vit_package))
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        online = _cli(["predict", "--json", "--model", f"hf://{REPO}@main", photo], env)
        info = _cli(["info", REPO], env)
    assert online.returncode == 0, online.stderr
    assert json.loads(online.stdout) == json.loads(local.stdout)
    assert info.returncode == 0, info.stderr
    assert "on the Hub" in info.stdout and "0=Fake, 1=Real" in info.stdout
    offline = _cli(["predict", "--json", "--model", REPO, photo], {**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == json.loads(local.stdout)


def test_cli_pushes_evaluates_and_fails_with_exit_2_without_traceback(cache, vit_package, tmp_path):
    photos = sample_photos()
    for label, photo in (("Fake", photos[0]), ("Real", photos[1])):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / photo.name).write_bytes(photo.read_bytes())
    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        pushed = _cli(["push", str(vit_package), "me/cli"], {**env, "HF_TOKEN": WRITE_TOKEN})
        evaluated = _cli(["eval", "--model", "me/cli", "--data", str(tmp_path / "data"), "--json"], env)
        missing = _cli(["predict", "--model", "nobody/nothing", str(photos[0])], env)
        unauthorised = _cli(["push", str(vit_package), "me/other"], {**env, "HF_TOKEN": READ_TOKEN})
    down = _cli(["scan", str(tmp_path / "data"), "--model", "me/never", "-o", str(tmp_path / "out.jsonl")], env)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed 8 files" in pushed.stdout and "README.md" in pushed.stdout
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert {row["variant"] for row in report["variants"]} == set(json.loads((vit_package / MANIFEST_FILE).read_text())
                                                                  ["variants"])
    for result, text in ((missing, "no such model repository"), (unauthorised, "credentials"),
                         (down, "can't be reached")):
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and text in result.stderr


def test_a_mistyped_local_path_says_no_such_local_directory_first(hub, cache, tmp_path):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for args in (["info", "artifacts/package"], ["predict", "--model", "artifacts/package", "face.jpg"]):
        result = subprocess.run([sys.executable, "-m", "fastvit_detect", *args], capture_output=True, text=True,
                                timeout=180, cwd=tmp_path, env={**os.environ, **env})
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("fastvit-detect: error: artifacts/package: no such local directory; read as "
                                        "a Hugging Face Hub id, no such model repository"), result.stderr
    assert str(parse_model_reference("org/name")) == "org/name"  # a Hub id all the same
    with pytest.raises(HubRepoNotFoundError, match="^nobody/nothing: no such model"):  # the API has one reading
        pull(hub, cache, "nobody/nothing")


def test_runtime_without_the_hub_extra(vit_package):
    blocker = f"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "huggingface_hub":
            raise ImportError(f"blocked import of {{name}}", name=name)
sys.meta_path.insert(0, Block())
import fastvit_detect
for module in pkgutil.walk_packages(fastvit_detect.__path__, "fastvit_detect."):
    if module.name != "fastvit_detect.__main__":
        importlib.import_module(module.name)
from fastvit_detect import Detector
from fastvit_detect.cli import main
from fastvit_detect.errors import MissingExtraError
print(Detector.load({str(vit_package)!r}).labels)
try:
    Detector.from_pretrained("org/name")
except MissingExtraError as exc:
    print("MISSING", exc)
print("EXIT", main(["info", "org/name"]))
"""
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "['Fake', 'Real']" in result.stdout and "EXIT 2" in result.stdout
    assert "MISSING" in result.stdout and "pip install 'fastvit-detect[hub]'" in result.stdout
    assert "Traceback" not in result.stderr and "fastvit-detect[hub]" in result.stderr
    # From the command line "org/name" may be a mistyped local path as well: that reading comes first.
    expected = "error: org/name: no such local directory; read as a Hugging Face Hub id, the Hugging Face Hub needs"
    assert expected in result.stderr, result.stderr


def test_every_hub_error_is_a_fastvit_error():
    for kind in (HubAuthError, HubDownloadError, HubOfflineError, HubRepoNotFoundError, HubRevisionNotFoundError,
                 HubTimeoutError, NotAModelPackageError):
        assert issubclass(kind, HubError)
