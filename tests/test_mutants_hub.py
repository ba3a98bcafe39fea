"""What the Hub module's survivors of the automatic mutation run showed untested. The expected behaviour is the
documented contract (a Hub reference is a value: hashable, equal by id and revision; a fetch's result can't be
changed under the package it opened), not read from hub.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import stat
import sys
import threading
import types
from pathlib import Path

import pytest

hub_constants = pytest.importorskip("huggingface_hub.constants")  # the hub extra
pytest.importorskip("uvicorn")  # the serve extra runs the fake Hub

from fakehub import READ_TOKEN, WRITE_TOKEN, FakeHub  # noqa: E402

import fastvit_detect.hub as hub_module  # noqa: E402
from fastvit_detect.errors import (  # noqa: E402
    ChecksumMismatchError,
    HubDownloadError,
    HubOfflineError,
    HubRepoNotFoundError,
    HubTimeoutError,
    InvalidPackageError,
    MissingExtraError,
    MissingFileError,
    NotAModelPackageError,
)
from fastvit_detect.hub import (  # noqa: E402
    Fetched,
    HubReference,
    Pushed,
    _first_line,
    _network_cause,
    _network_errors,
    _Request,
    _short,
    _Where,
    fetch,
    parse_model_reference,
    push,
)
from fastvit_detect.package import MANIFEST_FILE, PREPROCESSOR_FILE, ModelPackage  # noqa: E402


def test_a_hub_reference_is_an_immutable_hashable_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder named like the id
    typed = parse_model_reference("deepfakes/vit-onnx@main")
    plain = parse_model_reference("hf://deepfakes/vit-onnx@main")
    assert typed == plain == HubReference("deepfakes/vit-onnx", "main")  # how it was typed doesn't count
    assert len({typed, plain, HubReference("deepfakes/vit-onnx")}) == 2  # usable as a key: one per revision
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.revision = "other"  # type: ignore[misc]


def test_a_fetch_result_cannot_be_changed_under_its_package(vit_package):
    fetched = Fetched("deepfakes/vit-onnx", "0" * 40, ModelPackage.open(vit_package))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fetched.commit = "1" * 40  # type: ignore[misc]


def test_a_push_result_cannot_be_changed():
    pushed = Pushed("deepfakes/vit-onnx", "http://127.0.0.1/deepfakes/vit-onnx", "0" * 40, ["README.md"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        pushed.commit = "1" * 40  # type: ignore[misc]


# --- fetching from the fake Hub (tests/fakehub.py) ------------------------------------------------------------

REPO = "deepfakes/vit-onnx"


@pytest.fixture(autouse=True)
def no_xet(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True, raising=False)


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


def package_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


def variant_files(directory: Path, variant: str) -> list[str]:
    """The files a variant loads, read from the manifest itself (not through the code under test)."""
    entry = json.loads((directory / MANIFEST_FILE).read_text())["variants"][variant]
    return [entry["file"], entry["data_file"]]


def listed_at(name: str, size: object):
    """A listing rewrite: ``name`` shown at ``size`` bytes, the rest as they are."""
    return lambda answer: {**answer, "siblings": [{**entry, "size": size} if entry["rfilename"] == name else entry
                                                  for entry in answer["siblings"]]}


def pick(name: str):
    return lambda package: [package.lookup(name)]


@pytest.mark.parametrize("repo_id", ["not an id", "org/name/extra", "org/../name", "org--x/name"])
def test_fetch_refuses_what_is_no_repository_id_before_asking_the_hub(hub, tmp_path, repo_id):
    with pytest.raises(HubRepoNotFoundError, match="isn't a Hub repository id"):
        fetch(repo_id, cache_dir=tmp_path, endpoint=hub.url)
    assert hub.requests == []


@pytest.mark.parametrize("revision, accepted", [("v", True), ("r" * 255, True), ("r" * 256, False), ("", False)])
def test_a_revision_holds_1_to_255_characters(revision, accepted):
    reference = parse_model_reference(f"hf://{REPO}@{revision}") if accepted else None
    if accepted:
        assert reference == HubReference(REPO, revision)
    else:
        with pytest.raises(HubRepoNotFoundError, match="not a Hub id"):
            parse_model_reference(f"hf://{REPO}@{revision}")


def test_a_variant_file_missing_from_the_repository_is_refused_without_asking_for_it(hub, tmp_path, vit_package):
    files = package_files(vit_package)
    graph, _weights = variant_files(vit_package, "fp32")
    del files[graph]
    hub.add_commit(REPO, files)
    with pytest.raises(MissingFileError, match=f"variant 'fp32' file {graph} isn't in the repository"):
        fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
    assert not any(path.endswith("/" + graph) for _method, path in hub.requests)


def test_a_variant_file_of_another_size_is_refused_from_the_listing_alone(hub, tmp_path, vit_package):
    files = package_files(vit_package)
    _graph, weights = variant_files(vit_package, "fp32")
    vouched = len(files[weights])
    files[weights] += b"\0" * 4096
    hub.add_commit(REPO, files)
    with pytest.raises(ChecksumMismatchError, match=f"{weights} is {vouched + 4096:,} bytes on the Hub, the manifest "
                                                    f"says {vouched:,}; not downloading it"):
        fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
    assert not any(weights in path for _method, path in hub.requests)  # not even a HEAD


def test_a_fetch_by_commit_writes_no_ref_named_by_the_commit(hub, tmp_path, vit_package):
    """As huggingface_hub's own cache: refs/ names branches and tags, each holding its commit."""
    commit = hub.add_commit(REPO, package_files(vit_package))
    fetch(REPO, revision=commit, cache_dir=tmp_path, endpoint=hub.url)
    fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    refs = tmp_path / ("models--" + REPO.replace("/", "--")) / "refs"
    assert sorted(path.name for path in refs.iterdir()) == ["main"]
    assert (refs / "main").read_text() == commit


def test_a_branch_named_with_a_slash_is_recorded_for_offline_use(hub, tmp_path, vit_package):
    commit = hub.add_commit(REPO, package_files(vit_package), branch="release/v1")
    assert fetch(REPO, revision="release/v1", cache_dir=tmp_path, endpoint=hub.url).commit == commit
    refs = tmp_path / ("models--" + REPO.replace("/", "--")) / "refs"
    assert (refs / "release" / "v1").read_text() == commit
    offline = fetch(REPO, revision="release/v1", cache_dir=tmp_path, local_files_only=True)
    assert offline.commit is None and offline.package.root.name == commit


def test_a_config_missing_from_the_cache_is_named_when_offline(hub, tmp_path, vit_package):
    hub.add_commit(REPO, package_files(vit_package))
    fetched = fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    (fetched.package.root / PREPROCESSOR_FILE).unlink()  # a cache pruned by hand, or a pull killed part-way
    with pytest.raises(HubOfflineError, match=rf"only the cache was asked \(local_files_only\), and {PREPROCESSOR_FILE}"
                                              r" isn't in the cache"):
        fetch(REPO, cache_dir=tmp_path, local_files_only=True)


def test_a_listed_file_the_hub_then_cannot_find_is_named(hub, tmp_path, vit_package):
    files = package_files(vit_package)
    graph, _weights = variant_files(vit_package, "fp32")
    listed = len(files.pop(graph))
    hub.add_commit(REPO, files)
    # The listing still shows the graph (a push removing it lands between the listing and the download).
    hub.listing = lambda answer: {**answer, "siblings": [*answer["siblings"], {"rfilename": graph, "size": listed}]}
    with pytest.raises(HubDownloadError, match=rf"the repository has no file {graph} \(HTTP 404\)"):
        fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)


@pytest.mark.parametrize("repo_id", ["org/name-", "org/name."])
def test_an_id_huggingface_hub_itself_refuses_is_a_typed_not_found(tmp_path, repo_id):
    """Our pattern lets a name end in '-' or '.'; huggingface_hub's validator doesn't: still a HubRepoNotFoundError."""
    with pytest.raises(HubRepoNotFoundError, match="not a valid repository id or revision"):
        fetch(repo_id, cache_dir=tmp_path, local_files_only=True)


def test_a_push_to_a_hub_that_cannot_be_reached_is_an_offline_error(vit_package):
    """huggingface_hub's HTTP client raises its own connection errors: still a HubOfflineError naming the cause."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(HubOfflineError, match=rf"the Hub at 127\.0\.0\.1:{port} can't be reached: Connection refused"):
        push(vit_package, "me/pushed", token="a-token", endpoint=f"http://127.0.0.1:{port}")


def test_an_error_quotes_the_first_line_of_the_cause_at_most_300_characters():
    assert _first_line(ValueError("")) == "ValueError"  # no words: the cause's kind
    assert _first_line(ValueError("  first\nsecond  ")) == "first"
    assert _first_line(ValueError("x" * 301)) == "x" * 300


def test_an_error_quotes_a_value_of_80_characters_whole_and_cuts_a_longer_one():
    assert _short("x" * 78) == "'" + "x" * 78 + "'"  # a repr of 80 characters
    assert _short("x" * 79) == "'" + "x" * 76 + "..."  # 81: the first 77 and "..."


def test_an_http_client_module_without_the_usual_error_names_is_skipped(monkeypatch):
    """A version of one of the clients that renamed its errors (here a bare stand-in): no AttributeError while a
    Hub failure is being explained, only fewer kinds recognised."""
    monkeypatch.setitem(sys.modules, "httpx2", types.ModuleType("httpx2"))
    assert ConnectionError in _network_errors() and TimeoutError in _network_errors()


def test_a_download_deadline_is_six_read_timeouts_plus_its_size_at_100_kb_per_second():
    """The figures hub.py's comment promises: a 350 MB fp32 ViT-B gets an hour (plus the read timeouts), JSON a
    minute of read timeouts."""
    assert _Request(None, "model.onnx", "http://127.0.0.1/x", {}, 10, size=350_000_000).deadline_s == 60 + 3500
    assert _Request(None, "the file listing", "http://127.0.0.1/x", {}, 10).deadline_s == 60


# --- how failures read (the uncovered lines of the automatic run) ----------------------------------------------


def test_a_bare_id_that_fails_on_the_hub_says_first_that_no_such_local_directory_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typed = parse_model_reference("org/name")
    with pytest.raises(HubRepoNotFoundError) as refused, typed.local_reading_first():
        raise HubRepoNotFoundError("org/name: no such model repository", "org/name")
    assert str(refused.value) == ("org/name: no such local directory; read as a Hugging Face Hub id, no such model "
                                  "repository")
    assert refused.value.repo_id == "org/name"
    with pytest.raises(MissingExtraError, match=r"^org/name: no such local directory; read as a Hugging Face Hub id, "
                                                r"the hub extra is missing$"), typed.local_reading_first():
        raise MissingExtraError("the hub extra is missing")
    with pytest.raises(HubRepoNotFoundError, match=r"^org/name: no such model repository$"), \
            HubReference("org/name").local_reading_first():  # hf://org/name: a Hub id for sure, said as it is
        raise HubRepoNotFoundError("org/name: no such model repository", "org/name")


@pytest.fixture
def where(tmp_path):
    import huggingface_hub

    return _Where(huggingface_hub, "org/name", None, tmp_path, "http://127.0.0.1:1")


def test_the_hubs_refusals_read_as_typed_errors(where):
    assert where.refused("HTTP 404", "EntryNotFound", "", "model.onnx") == (
        HubDownloadError, "the repository has no file model.onnx (HTTP 404)")
    assert where.refused("HTTP 500", None, "Internal Error", "model.onnx") == (
        HubDownloadError, "the Hub answered for model.onnx with HTTP 500: Internal Error")
    assert where.refused("HTTP 502", None, "Bad Gateway", None) == (
        HubDownloadError, "the Hub answered with HTTP 502: Bad Gateway")


def test_a_failure_that_is_no_refusal_reads_as_a_typed_error_naming_its_cause(where):
    assert where._explain(OSError(28, "No space left on device"), "model.onnx") == (
        HubDownloadError, "downloading model.onnx failed: OSError: [Errno 28] No space left on device. Retry")
    assert where._explain(ValueError("bad header\nmore"), "model.onnx") == (
        HubDownloadError, "the Hub's answer for model.onnx made no sense: ValueError: bad header")


def test_a_network_cause_is_told_in_its_own_words():
    assert _network_cause(None) == "no answer"
    wrapped = RuntimeError("<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a connection")
    assert _network_cause(wrapped) == "Failed to establish a connection (RuntimeError)"
    assert _network_cause(OSError("outer")) == "outer (OSError)"  # no strerror: not an operating system's words
    wrapper = RuntimeError("wrapper")
    wrapper.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert _network_cause(wrapper) == "Connection refused (ConnectionRefusedError)"


def test_a_repository_with_neither_manifest_nor_onnx_model_is_not_a_package(hub, tmp_path):
    hub.add_commit(REPO, {"README.md": b"# notes\n", "config.json": b"{}"})
    with pytest.raises(NotAModelPackageError, match=r"no fastvit_manifest\.json and no ONNX model .*: not a model "
                                                    r"package"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)


def test_where_links_fail_the_cache_holds_copies(hub, tmp_path, vit_package, monkeypatch):
    hub.add_commit(REPO, package_files(vit_package))

    def no_links(self, target, target_is_directory=False):
        raise OSError(1, "Operation not permitted")  # a file system without symlinks (FAT, some shares)

    monkeypatch.setattr(Path, "symlink_to", no_links)
    fetched = fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
    for name in [MANIFEST_FILE, *variant_files(vit_package, "fp32")]:
        copy = fetched.package.root / name
        assert not copy.is_symlink() and copy.read_bytes() == (vit_package / name).read_bytes()


@pytest.mark.parametrize("siblings", ["not a list", None, [{"size": 1}], ["model.onnx"], [{"rfilename": 5}]])
def test_a_listing_whose_files_make_no_sense_is_refused_as_such(hub, tmp_path, vit_package, siblings):
    hub.add_commit(REPO, package_files(vit_package))
    hub.listing = lambda answer: {**answer, "siblings": siblings}
    with pytest.raises(HubDownloadError, match=r"the Hub's answer for the file listing made no sense \(b'\{"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert hub.downloads() == []


@pytest.mark.parametrize("change", [-4096, 4096])
def test_a_file_the_hub_announces_at_another_size_than_listed_is_not_downloaded(hub, tmp_path, vit_package, change):
    """The listing agrees with the manifest, the file itself doesn't (a push landing between the two, or a Hub
    that lies in one place): refused from its announced size, before a byte of it is fetched."""
    files = package_files(vit_package)
    _graph, weights = variant_files(vit_package, "fp32")
    vouched = len(files[weights])
    files[weights] = files[weights][:change] if change < 0 else files[weights] + b"\0" * change
    hub.add_commit(REPO, files)
    hub.listing = listed_at(weights, vouched)
    with pytest.raises(ChecksumMismatchError, match=f"the Hub announces {weights} at {vouched + change:,} bytes, "
                                                    f"the manifest says {vouched:,}; not downloading it"):
        fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
    assert weights not in hub.downloads()


def test_a_short_download_of_a_file_announced_without_a_size_is_refused_and_not_kept(hub, tmp_path, vit_package,
                                                                                     monkeypatch):
    """A Hub whose HEAD names no size (no X-Linked-Size, no Content-Length: the fake can't leave both out, so its
    answer is stripped here) then sends less than the manifest vouches for: refused as short, nothing cached."""
    files = package_files(vit_package)
    _graph, weights = variant_files(vit_package, "fp32")
    vouched = len(files[weights])
    files[weights] = files[weights][:-4096]
    hub.add_commit(REPO, files)
    hub.listing = listed_at(weights, vouched)
    resolve = hub_module._Downloader._resolve
    monkeypatch.setattr(hub_module._Downloader, "_resolve", lambda *args: (*resolve(*args)[:2], None))
    with pytest.raises(HubDownloadError, match=f"sent {vouched - 4096:,} bytes of {weights}, {vouched:,} were "
                                               "announced; the partial file was removed"):
        fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
    blobs = tmp_path / ("models--" + REPO.replace("/", "--")) / "blobs"
    assert all(path.stat().st_size != vouched - 4096 for path in blobs.iterdir())


def test_a_location_header_on_an_answer_that_is_no_redirect_is_ignored(hub, tmp_path, vit_package):
    """Only a 3xx answer moves a download: a Location on a 200 (a misconfigured proxy, a hostile Hub) is not
    followed to another host."""
    hub.add_commit(REPO, package_files(vit_package))
    hub.head_headers[PREPROCESSOR_FILE] = {"Location": "http://127.0.0.1:1/elsewhere"}
    fetched = fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert (fetched.package.root / PREPROCESSOR_FILE).read_bytes() == (vit_package / PREPROCESSOR_FILE).read_bytes()


def test_a_300_answer_with_a_location_moves_the_download_there(hub, tmp_path, vit_package):
    """Every 3xx with a Location is a redirect, 300 included: the download goes where it says (here another
    revision's address, which serves the same bytes), as the request log shows."""
    hub.add_commit(REPO, package_files(vit_package))
    moved_to = f"/{REPO}/resolve/main/{PREPROCESSOR_FILE}"
    hub.head_status[PREPROCESSOR_FILE] = 300
    hub.head_headers[PREPROCESSOR_FILE] = {"Location": moved_to}
    fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    fetched_from = [path for method, path in hub.requests if method == "GET" and path.endswith(PREPROCESSOR_FILE)]
    assert fetched_from == [moved_to]


@pytest.mark.parametrize("status", [400, 500])
def test_a_head_answer_of_400_or_more_is_refused(hub, tmp_path, vit_package, status):
    hub.add_commit(REPO, package_files(vit_package))
    hub.head_status[PREPROCESSOR_FILE] = status
    with pytest.raises(HubDownloadError, match=f"the Hub answered for {PREPROCESSOR_FILE} with HTTP {status}"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)


def test_a_size_header_that_is_no_number_counts_as_no_size(hub, tmp_path, vit_package):
    hub.add_commit(REPO, package_files(vit_package))
    hub.head_headers[PREPROCESSOR_FILE] = {"X-Linked-Size": "large"}
    fetched = fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert (fetched.package.root / PREPROCESSOR_FILE).read_bytes() == (vit_package / PREPROCESSOR_FILE).read_bytes()


def test_a_head_404_without_an_error_code_means_the_file_is_missing(hub, tmp_path, vit_package):
    hub.add_commit(REPO, package_files(vit_package))
    hub.head_status[PREPROCESSOR_FILE] = 404
    with pytest.raises(HubDownloadError, match=f"the repository has no file {PREPROCESSOR_FILE} \\(HTTP 404\\)"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)


def test_a_refusal_quotes_the_hubs_own_error_message(hub, tmp_path, vit_package):
    hub.add_commit(REPO, package_files(vit_package))
    hub.head_status[PREPROCESSOR_FILE] = 500
    hub.head_headers[PREPROCESSOR_FILE] = {"X-Error-Message": "storage backend unavailable"}
    with pytest.raises(HubDownloadError, match="with HTTP 500: 'storage backend unavailable'"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)


def test_the_token_goes_to_the_hub_and_never_to_the_cdn(hub, tmp_path, vit_package):
    hub.add_commit(REPO, package_files(vit_package), private=True)
    fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url, token=READ_TOKEN)
    cdn = [path for _method, path in hub.requests if path.startswith("/cdn/")]
    assert cdn and not any(path.startswith("/cdn/") for path in hub.authorized)
    assert any(path.startswith("/api/models/") for path in hub.authorized)


@pytest.mark.parametrize("size", ["325", True, -1, 2.5])
def test_a_listed_size_that_is_no_byte_count_counts_as_unknown(hub, tmp_path, vit_package, size):
    hub.add_commit(REPO, package_files(vit_package))
    hub.listing = listed_at(PREPROCESSOR_FILE, size)
    fetched = fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert (fetched.package.root / PREPROCESSOR_FILE).read_bytes() == (vit_package / PREPROCESSOR_FILE).read_bytes()


def test_a_file_listed_at_0_bytes_is_a_size_not_an_unknown(hub, tmp_path, vit_package):
    hub.add_commit(REPO, package_files(vit_package))
    _graph, weights = variant_files(vit_package, "fp32")
    vouched = (vit_package / weights).stat().st_size
    hub.listing = listed_at(weights, 0)
    with pytest.raises(ChecksumMismatchError, match=f"{weights} is 0 bytes on the Hub, the manifest says {vouched:,}"):
        fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)


def test_a_hub_whose_name_does_not_resolve_is_offline_and_the_cache_serves(hub, tmp_path, vit_package):
    """No such host (a typo in HF_ENDPOINT, no DNS on a plane): the Hub can't be reached, so the cache serves, as
    it does for a refused connection."""
    commit = hub.add_commit(REPO, package_files(vit_package))
    fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
    cached = fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint="http://no-such-host.invalid")
    assert cached.commit is None and cached.package.root.name == commit


def test_a_download_redirected_to_another_host_goes_there_without_the_token(hub, tmp_path, vit_package):
    """A small file's GET answered with a redirect to a CDN (the HEAD said nothing of it): followed, and the
    token, meant for the Hub, stays behind."""
    hub.add_commit(REPO, package_files(vit_package), private=True)
    data = (vit_package / PREPROCESSOR_FILE).read_bytes()
    oid = hashlib.sha256(data).hexdigest()
    hub.lfs[oid] = data
    hub.get_redirect[PREPROCESSOR_FILE] = f"{hub.cdn_url}/cdn/{oid}/{PREPROCESSOR_FILE}"
    fetched = fetch(REPO, cache_dir=tmp_path, endpoint=hub.url, token=READ_TOKEN)
    assert (fetched.package.root / PREPROCESSOR_FILE).read_bytes() == data
    assert f"/cdn/{oid}/{PREPROCESSOR_FILE}" in [path for _method, path in hub.requests]
    assert not any(path.startswith("/cdn/") for path in hub.authorized)


def test_each_requests_watchdog_ends_with_it_and_never_holds_the_process_open(hub, tmp_path, vit_package,
                                                                              monkeypatch):
    """A watchdog per request: cancelled when its request ends (not left sleeping out a deadline of up to an hour,
    one thread per file), and a daemon, so an interpreter exiting mid-download doesn't wait for it."""
    hub.add_commit(REPO, package_files(vit_package))
    started: list[threading.Timer] = []

    class RecordedTimer(threading.Timer):
        def start(self) -> None:
            started.append(self)
            super().start()

    monkeypatch.setattr(hub_module.threading, "Timer", RecordedTimer)
    fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
    assert len(started) >= 4  # the listing, and a HEAD and a GET per file at least
    assert all(timer.daemon for timer in started)
    assert all(timer.finished.is_set() for timer in started)  # cancelled: set at once, not after the deadline


@pytest.mark.parametrize("status", [400, 503])
def test_a_download_answered_with_an_error_status_is_refused_and_nothing_cached(hub, tmp_path, vit_package, status):
    hub.add_commit(REPO, package_files(vit_package))
    hub.get_status[PREPROCESSOR_FILE] = status
    with pytest.raises(HubDownloadError, match=f"answered the download of {PREPROCESSOR_FILE} with HTTP {status}"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    blobs = tmp_path / ("models--" + REPO.replace("/", "--")) / "blobs"
    assert b"refused" not in [path.read_bytes() for path in blobs.iterdir()]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_downloaded_files_are_readable_as_the_umask_allows_and_the_umask_is_kept(hub, tmp_path, vit_package, umask):
    """As huggingface_hub leaves its blobs: 0o666 less the umask (not mkstemp's 0o600, which would hide a shared
    cache from the other users it's shared with)."""
    hub.add_commit(REPO, package_files(vit_package))
    before = os.umask(umask)
    try:
        fetched = fetch(REPO, select=pick("fp32"), cache_dir=tmp_path, endpoint=hub.url)
        assert os.umask(umask) == umask  # the process's umask, as the fetch found it
    finally:
        os.umask(before)
    for name in [MANIFEST_FILE, *variant_files(vit_package, "fp32")]:
        assert stat.S_IMODE((fetched.package.root / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.mark.parametrize("size, plus", [(0, ""), (50_000, ""), (75_000, ", plus 1 s for its size"),
                                        (350_000_000, ", plus 3500 s for its size")])
def test_a_missed_deadline_says_how_it_was_made(where, size, plus):
    """Six read timeouts, plus the size's share when it adds more than half a second (0.5 s at 50 kB is left out,
    0.75 s at 75 kB rounds to 1 s)."""
    request = _Request(where, "model.onnx", "http://127.0.0.1/x", {}, 10, size=size)
    with pytest.raises(HubTimeoutError) as missed:
        request.too_slow(None)
    deadline = 60 + size / 100_000
    assert (f"downloading model.onnx from 127.0.0.1 didn't finish within its deadline of {deadline:.0f} s "
            f"(6 read timeouts of 10 s{plus}); nothing partial was kept") in str(missed.value)


def test_a_hub_over_https_that_refuses_the_connection_is_offline(tmp_path):
    """The TLS handler is set up as urllib's own (its context), so an https Hub fails as one that can't be reached."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(HubOfflineError, match=rf"the Hub at 127\.0\.0\.1:{port} can't be reached: Connection refused"):
        fetch(REPO, cache_dir=tmp_path, endpoint=f"https://127.0.0.1:{port}")


def test_a_link_left_by_a_killed_fetch_in_this_process_is_replaced_by_a_link(hub, tmp_path, vit_package):
    """The staging name holds the process and thread ids: one left by an earlier fetch of this same thread (killed
    between making and renaming it) is removed first, and the file is still linked, not copied."""
    commit = hub.add_commit(REPO, package_files(vit_package))
    snapshot = tmp_path / ("models--" + REPO.replace("/", "--")) / "snapshots" / commit
    snapshot.mkdir(parents=True)
    stale = snapshot / f".{MANIFEST_FILE}.{os.getpid()}.{threading.get_ident()}.link"
    stale.write_bytes(b"half a copy")  # where links failed, the staging name holds a copy
    fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert (snapshot / MANIFEST_FILE).is_symlink() and not stale.exists()
    assert (snapshot / MANIFEST_FILE).read_bytes() == (vit_package / MANIFEST_FILE).read_bytes()


@pytest.mark.parametrize("listed, refused", [(16 * 1024 * 1024, False), (16 * 1024 * 1024 + 1, True)])
def test_a_config_listed_at_up_to_16_mib_is_fetched_and_over_it_is_not(hub, tmp_path, vit_package, listed, refused):
    hub.add_commit(REPO, package_files(vit_package))
    hub.listing = listed_at(PREPROCESSOR_FILE, listed)
    if refused:
        with pytest.raises(InvalidPackageError, match=f"{PREPROCESSOR_FILE} is {listed:,} bytes \\(at most "
                                                      "16,777,216\\): not downloading it"):
            fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
        assert PREPROCESSOR_FILE not in hub.downloads()
    else:
        fetched = fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)  # the HEAD then announces the real size
        assert (fetched.package.root / PREPROCESSOR_FILE).is_file()


@pytest.mark.parametrize("repo_id", ["name-without-owner", "org/../name", "org--x/name", "not an/id"])
def test_push_refuses_what_is_no_repository_id_before_asking_the_hub(hub, vit_package, repo_id):
    with pytest.raises(HubRepoNotFoundError, match="isn't a Hub repository id"):
        push(vit_package, repo_id, token="a-token", endpoint=hub.url)
    assert hub.requests == []


@pytest.mark.parametrize("revision", [None, "candidate"])
def test_a_second_push_to_the_same_repository_and_branch_is_a_new_commit(hub, packages, revision):
    """New weights for a published model: the repository and the branch exist by then, and that is fine."""
    first = push(packages["vit"], "me/pushed", revision=revision, token=WRITE_TOKEN, endpoint=hub.url)
    second = push(packages["legacy-vit"], "me/pushed", revision=revision, token=WRITE_TOKEN, endpoint=hub.url)
    assert second.commit != first.commit
    assert hub.repos["me/pushed"].branches[revision or "main"] == second.commit


def test_the_pushed_manifest_is_json_indented_by_two_spaces(hub, vit_package):
    """The file people read on the Hub's page: the exporter's layout (two spaces, a final newline)."""
    pushed = push(vit_package, "me/pushed", token=WRITE_TOKEN, endpoint=hub.url)
    text = hub.repos["me/pushed"].commits[pushed.commit][MANIFEST_FILE].decode()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
    assert text.splitlines()[1].startswith('  "')


def test_a_file_address_redirected_within_the_hub_is_followed(hub, tmp_path, vit_package):
    """A renamed repository: the Hub answers its old file addresses with a 307 to the new ones, on the same host.
    The HEAD follows it, for the file's ETag and size (a redirect to another host is the CDN's, answered as it
    is)."""
    commit = hub.add_commit("deepfakes/vit-onnx-v2", package_files(vit_package))
    hub.add_commit(REPO, package_files(vit_package))  # the listing still answers under the old name
    hub.renamed[REPO] = "deepfakes/vit-onnx-v2"
    hub.listing = lambda answer: {**answer, "sha": commit}
    fetched = fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)
    assert (fetched.package.root / PREPROCESSOR_FILE).read_bytes() == (vit_package / PREPROCESSOR_FILE).read_bytes()
    assert f"/deepfakes/vit-onnx-v2/resolve/{commit}/{PREPROCESSOR_FILE}" in [path for _method, path in hub.requests]


def test_a_head_answer_naming_no_valid_etag_is_refused(hub, tmp_path, vit_package):
    hub.add_commit(REPO, package_files(vit_package))
    hub.head_headers[PREPROCESSOR_FILE] = {"ETag": '"../../escape"'}
    with pytest.raises(HubDownloadError, match=f"the Hub's answer for {PREPROCESSOR_FILE} names its content "
                                               "'../../escape', which isn't an ETag"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)


def test_a_head_answer_from_another_commit_than_listed_is_refused(hub, tmp_path, vit_package):
    commit = hub.add_commit(REPO, package_files(vit_package))
    hub.head_headers[PREPROCESSOR_FILE] = {"X-Repo-Commit": "0" * 40}
    with pytest.raises(HubDownloadError, match=f"the Hub answered for {PREPROCESSOR_FILE} from commit '{'0' * 40}', "
                                               f"not from {commit}, the commit its listing named"):
        fetch(REPO, cache_dir=tmp_path, endpoint=hub.url)


def test_a_status_line_trickled_past_the_deadline_is_a_timeout(tmp_path, monkeypatch):
    """The watchdog shuts the connection mid status line: http.client then raises (the peer 'closed' it), and that
    is reported as the deadline it is, not as a Hub that can't be reached (the cache, empty here, is asked then)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_ETAG_TIMEOUT", 1)  # the listing's deadline: 6 read timeouts, 6 s
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle_status_line():
        connection, _ = listener.accept()
        with connection:
            for byte in b"HTTP/1.1 200 OK\r\n":  # 17 bytes at 0.5 s: 8.5 s, each byte within the read timeout
                if stop.wait(0.5):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=trickle_status_line, daemon=True).start()
    try:
        with pytest.raises(HubOfflineError, match="the file listing from 127.0.0.1:.* didn't finish within its "
                                                  "deadline of 6 s"):
            fetch(REPO, cache_dir=tmp_path, endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}")
    finally:
        stop.set()
        listener.close()
