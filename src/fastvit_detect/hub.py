"""Model packages on the Hugging Face Hub: fetch one by id into the standard HF cache, publish one with a card.

Needs the ``hub`` extra (``huggingface_hub``, torch-free). This module imports it only when a download or push is
asked for, so the runtime imports, and loads local packages, without it.

A fetch reads the repository's listing, then the manifest and configs, which it checks against the manifest; it
chooses the variant exactly as :meth:`~fastvit_detect.Detector.load` would, and downloads that variant's graph and
weights only. The snapshot folder it leaves in the cache is an ordinary package directory, so
:class:`~fastvit_detect.ModelPackage` opens it and verifies the sha256s with the same code as for a local
directory. The Hub is a peer that may lie or crawl: every answer stops at its announced size and every request
meets a deadline (:class:`_Downloader`). Every failure of the Hub, the network or the cache becomes a
:class:`~fastvit_detect.errors.HubError` subclass naming the repository and what to do.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from .errors import (
    ChecksumMismatchError,
    FastVitDetectError,
    HubAuthError,
    HubDownloadError,
    HubError,
    HubOfflineError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubTimeoutError,
    InvalidPackageError,
    MissingExtraError,
    MissingFileError,
    NotAModelPackageError,
)
from .modelcard import model_card
from .package import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MAX_JSON_BYTES,
    OPTIMUM_FILES,
    PREPROCESSOR_FILE,
    ModelPackage,
    Variant,
)

HUB_PREFIX = "hf://"
INSTALL_HINT = "pip install 'fastvit-detect[hub]'"
# Files that mark a repository as a PyTorch/transformers checkpoint rather than an ONNX package.
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                    "pytorch_model.bin.index.json")

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
_REPO_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}")
_BARE_REPO_ID = re.compile(rf"{_NAME}/{_NAME}")  # a bare id needs its owner: "name" alone is a local folder
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubReference:
    """A model named by Hub id, as the command line gives it: ``org/name`` or ``hf://org/name@revision``."""

    repo_id: str
    revision: str | None = None
    # The text as typed, when it could as well be a local path (a bare org/name that doesn't exist here).
    typed: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    @contextmanager
    def local_reading_first(self) -> Iterator[None]:
        """A fetch that fails for a bare ``org/name`` says first that no such local directory exists: the text is
        as likely a mistyped path (``artifacts/package``) as a Hub id, and the Hub's answer alone misleads."""
        try:
            yield
        except (HubError, MissingExtraError) as exc:
            if self.typed is None:
                raise
            message = (f"{self.typed}: no such local directory; read as a Hugging Face Hub id, "
                       f"{str(exc).removeprefix(f'{self}: ')}")
            if isinstance(exc, HubError):
                raise type(exc)(message, exc.repo_id) from exc
            raise MissingExtraError(message) from exc


def parse_model_reference(text: str) -> HubReference | None:
    """The Hub id ``text`` names, or None when it names a local package directory.

    ``hf://org/name[@revision]`` is always the Hub; a path that exists is always local; a bare
    ``org/name[@revision]`` that isn't an existing path is a Hub id; anything else is a local path (which then
    fails to open with the usual "no such directory").
    """
    if text.startswith(HUB_PREFIX):
        reference = _split_reference(text[len(HUB_PREFIX):], _REPO_ID)
        if reference is None:
            raise HubRepoNotFoundError(f"{text}: not a Hub id; expected hf://org/name or hf://org/name@revision")
        return reference
    if os.path.lexists(os.path.expanduser(text)):
        return None
    reference = _split_reference(text, _BARE_REPO_ID)
    return replace(reference, typed=text) if reference is not None else None


def _split_reference(text: str, pattern: re.Pattern[str]) -> HubReference | None:
    repo_id, at, revision = text.partition("@")
    if not pattern.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        return None
    if at and not _safe_revision(revision):
        return None
    return HubReference(repo_id, revision or None)


def _require_hub() -> ModuleType:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as exc:
        raise MissingExtraError(f"the Hugging Face Hub needs the hub extra ({exc.name or exc} is missing); "
                                f"install it with: {INSTALL_HINT}") from exc
    return huggingface_hub


# --- fetching -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A package fetched into the HF cache: opened, with the variants whose files were downloaded."""

    repo_id: str
    commit: str | None  # None when served from the cache without asking the Hub
    package: ModelPackage
    selected: list[Variant] = field(default_factory=list)

    @contextmanager
    def explain_checksum_errors(self) -> Iterator[None]:
        """A file that fails verification came from the Hub: say so, and how to fetch it afresh."""
        try:
            yield
        except ChecksumMismatchError as exc:
            raise ChecksumMismatchError(
                f"{exc}. It was downloaded from {self.repo_id}"
                f"{'@' + self.commit if self.commit else ''}: the download was damaged, or the repository's files "
                "don't match its manifest. Retry with force_download=True; if it persists, the repository is broken"
            ) from exc


def fetch(
    repo_id: str,
    *,
    revision: str | None = None,
    select: Callable[[ModelPackage], Iterable[Variant]] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    endpoint: str | None = None,
) -> Fetched:
    """Download a package's manifest and configs, then the files of the variants ``select`` picks from it
    (none without ``select``). Served from the cache when offline or when the Hub can't be reached."""
    hub = _require_hub()
    if _REPO_ID.fullmatch(repo_id) is None or ".." in repo_id or "--" in repo_id:
        raise HubRepoNotFoundError(f"{repo_id!r} isn't a Hub repository id (expected org/name)", repo_id)
    if revision is not None and not _safe_revision(revision):
        raise HubRevisionNotFoundError(f"{repo_id}: {revision!r} isn't a revision (a branch, tag or commit)", repo_id)
    if force_download and local_files_only:
        raise ValueError("force_download=True needs the Hub; it can't be combined with local_files_only=True")
    where = _Where(hub, repo_id, revision, cache_dir, endpoint)
    listing: dict[str, int | None] | None = None
    commit: str | None = None
    if not (local_files_only or hub.constants.HF_HUB_OFFLINE):
        try:
            with where.translate():
                commit, listing = _Downloader(hub, where, revision, False, token, force_download).listing()
        except HubOfflineError as exc:
            if force_download:
                raise
            # As huggingface_hub does for single files: when the Hub can't be reached, the cache still serves.
            where.unreachable = str(exc).removeprefix(f"{where.name}: ")
    # Pinned to the commit the listing came from, so every file is of one version even if a push lands meanwhile.
    download = _Downloader(hub, where, commit or revision, listing is None, token, force_download)

    if listing is not None:
        _check_layout(where, listing)
        for name in (MANIFEST_FILE, CONFIG_FILE, PREPROCESSOR_FILE):
            if name in listing:
                snapshot = download(name).parent
    else:
        # The manifest first: a cached config then means the manifest was fetched too, if the repository has one,
        # so a verified package is never mistaken for an unverified Optimum export.
        try:
            snapshot = download(MANIFEST_FILE).parent
        except HubOfflineError:
            snapshot = download(CONFIG_FILE).parent
        for name in (CONFIG_FILE, PREPROCESSOR_FILE):
            download(name)
    # The HF cache links a snapshot's files to the repository's blobs folder: they must resolve inside that.
    repository = snapshot.parent.parent if snapshot.parent.name == "snapshots" else snapshot
    package = ModelPackage.open(snapshot, files=listing, within=repository)
    # Before choosing a variant: the configs decide what is downloaded and how images are read.
    with Fetched(repo_id, commit, package).explain_checksum_errors():
        package.verify_configs()
    selected = list(select(package)) if select is not None else []
    for variant in selected:
        for path, _sha256, size in variant.files:
            if listing is not None:
                _check_listed(where, listing, variant, path.name, size)
            download(path.name, size)
    if commit is not None and (revision or "main") != commit and repository != snapshot:
        # What huggingface_hub's snapshot_download does too: the downloads were pinned to the commit, so record which
        # commit the branch or tag named, for offline use by that name.
        ref = repository / "refs" / (revision or "main")
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
        except OSError:  # a read-only cache: the package is here all the same, only offline use by name suffers
            pass
    return Fetched(repo_id, commit, package, selected)


def _safe_revision(revision: str) -> bool:
    """A branch, tag or commit name that stays a name inside the cache's refs/ folder."""
    parts = revision.split("/")
    return (0 < len(revision) <= 255 and "\\" not in revision and not any(char.isspace() for char in revision)
            and all(part not in ("", ".", "..") for part in parts))


class _Where:
    """The repository a fetch or push talks to, and the typed errors its failures become."""

    def __init__(self, hub: ModuleType, repo_id: str, revision: str | None, cache_dir: Any, endpoint: str | None):
        self.hub, self.repo_id, self.revision = hub, repo_id, revision
        self.cache = str(cache_dir or hub.constants.HF_HUB_CACHE)
        self.endpoint = endpoint or hub.constants.ENDPOINT
        self.unreachable: str | None = None  # why the Hub couldn't be asked, when the cache stood in for it
        self.action = "downloading"

    @property
    def name(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    def fail(self, kind: type[HubError], message: str) -> NoReturn:
        raise kind(f"{self.name}: {message}", self.repo_id)

    @contextmanager
    def translate(self, file: str | None = None) -> Iterator[None]:
        """Turn what huggingface_hub, requests or httpx raise into this library's errors."""
        try:
            yield
        except FastVitDetectError:
            raise
        except Exception as exc:
            kind, message = self._explain(exc, file)
            raise kind(f"{self.name}: {message}", self.repo_id) from exc

    def refused(self, status: str, code: str | None, detail: str, file: str | None) -> tuple[type[HubError], str]:
        """What an HTTP error answer means; ``code``: the Hub's X-Error-Code (RepoNotFound, GatedRepo, ...)."""
        what = f"{file} " if file else ""
        if code == "GatedRepo":
            return HubAuthError, ("a gated repository: request access on its page, then pass a token of the account "
                                  f"that has it (token=..., --token, HF_TOKEN or `hf auth login`) ({status})")
        if status in ("HTTP 401", "HTTP 403"):
            return HubAuthError, (f"the Hub wants credentials it didn't get or refused ({status}): the repository is "
                                  "private or gated (or doesn't exist), or the token is invalid or may not write here. "
                                  "Pass a valid token (token=..., --token, HF_TOKEN or `hf auth login`)")
        if code == "RepoNotFound":
            return HubRepoNotFoundError, (f"no such model repository on {self.endpoint} ({status}); check the id, or "
                                          "for a local package give an existing directory")
        if code == "RevisionNotFound":
            return HubRevisionNotFoundError, (f"the repository has no revision {self.revision!r} (a branch, tag or "
                                              f"commit) ({status})")
        if code == "EntryNotFound":
            return HubDownloadError, f"the repository has no file {what}({status})"
        return HubDownloadError, f"the Hub answered {('for ' + what) if what else ''}with {status}: {detail}"

    def _unreachable(self, exc: BaseException | None) -> str:
        host = urllib.parse.urlsplit(self.endpoint).netloc or self.endpoint
        return f"the Hub at {host} can't be reached: {_network_cause(exc)}"

    def _explain(self, exc: Exception, file: str | None) -> tuple[type[HubError], str]:
        errors = self.hub.errors
        what = f"{file} " if file else ""
        status = _status(exc)
        if isinstance(exc, errors.LocalEntryNotFoundError):
            if self.hub.constants.HF_HUB_OFFLINE:
                reason = "offline mode is on (HF_HUB_OFFLINE=1)"
            elif self.unreachable or exc.__cause__ is not None:
                reason = self.unreachable or self._unreachable(exc.__cause__)
            else:
                reason = "only the cache was asked (local_files_only)"
            return HubOfflineError, (f"{reason}, and {what or 'the package '}isn't in the cache ({self.cache}). "
                                     "Download it once with the network on, or give a local package directory")
        code = next((code for kind, code in ((errors.GatedRepoError, "GatedRepo"),
                                             (errors.RepositoryNotFoundError, "RepoNotFound"),
                                             (errors.RevisionNotFoundError, "RevisionNotFound"),
                                             (errors.EntryNotFoundError, "EntryNotFound")) if isinstance(exc, kind)),
                    None)
        if code is not None or status in ("HTTP 401", "HTTP 403") or isinstance(exc, errors.HfHubHTTPError):
            return self.refused(status, code, _first_line(exc), file)
        if isinstance(exc, _validation_errors(errors)):
            return HubRepoNotFoundError, f"not a valid repository id or revision: {_first_line(exc)}"
        if isinstance(exc, _network_errors()):
            return HubOfflineError, self._unreachable(exc)
        if isinstance(exc, OSError):  # a size that doesn't match (a partial download), a full disk
            return HubDownloadError, f"{self.action} {what}failed: {_describe(exc)}. Retry"
        # An answer huggingface_hub couldn't make sense of: a typed error all the same, never a traceback.
        return HubDownloadError, f"the Hub's answer {('for ' + what) if what else ''}made no sense: {_describe(exc)}"


def _validation_errors(errors: ModuleType) -> tuple[type[BaseException], ...]:
    found = getattr(errors, "HFValidationError", None)
    return (found,) if found is not None else ()


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures and timeouts, of the HTTP client this huggingface_hub version uses (requests before
    1.0, httpx in 1.x, httpx2 in 2.x), plus the builtins huggingface_hub's offline mode raises."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("requests", ("ConnectionError", "Timeout")), ("httpx", ("TransportError",)),
                          ("httpx2", ("TransportError",))):
        loaded = sys.modules.get(module)
        found += [getattr(loaded, name) for name in names if loaded is not None and hasattr(loaded, name)]
    return tuple(found)


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code is not None else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _network_cause(exc: BaseException | None) -> str:
    """Why a connection failed, in one line: the innermost operating-system error's own words ("Connection
    refused", "timed out", "Name or service not known"), not the HTTP client's wrappers, whose text embeds reprs of
    its connection objects and the whole URL."""
    found: OSError | None = None
    seen: set[int] = set()
    pending = [exc] if exc is not None else []
    while pending:  # breadth first through causes, contexts, urllib3's reason and requests' wrapped error
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and (current.strerror or isinstance(current, TimeoutError)):
            found = current  # the deepest wins
        links = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        pending += [link for link in links if isinstance(link, BaseException)]
    if found is not None:
        return f"{found.strerror or str(found) or 'timed out'} ({type(found).__name__})"
    if exc is None:
        return "no answer"
    # The wrappers' object reprs go ("<urllib3.connection.HTTPConnection object at 0x...>: "); urllib's own
    # "<urlopen error no host given>" keeps its words.
    text = re.sub(r"<urlopen error (.*?)>", r"\1", _first_line(exc))
    return f"{re.sub(r'<[^<>]* at 0x[0-9a-fA-F]+>:? ?', '', text)[:200]} ({type(exc).__name__})"


# Every request to the Hub ends within GRACE_READ_TIMEOUTS read timeouts (HF_HUB_ETAG_TIMEOUT for the listing and
# the file metadata, HF_HUB_DOWNLOAD_TIMEOUT for file contents; 10 s each by default), plus a file's announced size
# at MIN_DOWNLOAD_RATE: a read timeout alone restarts with every byte, so a server trickling one byte a second
# would hold a fetch for days.
GRACE_READ_TIMEOUTS = 6
MIN_DOWNLOAD_RATE = 100_000  # bytes per second: a 350 MB fp32 ViT-B gets an hour, a manifest a minute
CHUNK_BYTES = 1 << 20
_ETAG = re.compile(r"[0-9A-Za-z_-]{1,128}")  # the blob's file name in the cache: no path, no dot


class _Downloader:
    """The repository's listing, and files of one commit into the HF cache layout (``models--org--name/blobs/
    <etag>``, linked from ``snapshots/<commit>/<file>``), where huggingface_hub, transformers and an offline load
    find them.

    The requests are made here rather than by huggingface_hub, which reads a whole answer whatever its size (it
    compares sizes after writing a download out) and bounds each read but not the exchange. Here an answer stops
    at its announced size (or at a cap for JSON), every request meets a deadline, and no partial file stays.
    """

    def __init__(self, hub: ModuleType, where: _Where, revision: str | None, cache_only: bool,
                 token: str | bool | None, force_download: bool):
        self.hub, self.where, self.revision, self.cache_only = hub, where, revision, cache_only
        self.token, self.force_download = token, force_download

    def listing(self) -> tuple[str, dict[str, int | None]]:
        """The commit ``revision`` names and its files with their sizes (``GET /api/models/{repo}/revision/{rev}
        ?blobs=True``, what ``HfApi.model_info(files_metadata=True)`` asks)."""
        url = f"{self.where.endpoint.rstrip('/')}/api/models/{self.where.repo_id}"
        if self.where.revision:
            url += f"/revision/{urllib.parse.quote(self.where.revision, safe='')}"
        exchange = _Request(self.where, "the file listing", url + "?blobs=True", self._headers(url),
                            self.hub.constants.HF_HUB_ETAG_TIMEOUT)
        body = bytearray()
        with exchange.open() as response:
            self._check_answer(response, None)
            exchange.read(response, MAX_JSON_BYTES, None, body.extend)
        try:
            data = json.loads(bytes(body))
        except ValueError:
            data = None
        siblings = data.get("siblings") if isinstance(data, dict) else None
        if not isinstance(siblings, list) or not all(isinstance(entry, dict) and isinstance(entry.get("rfilename"),
                                                                                            str) for entry in siblings):
            self.where.fail(HubDownloadError, f"the Hub's answer for the file listing made no sense "
                                              f"({_short(bytes(body[:60]))})")
        commit = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
            self.where.fail(HubDownloadError, f"the Hub's listing names no valid commit ({_short(commit)})")
        return commit, {entry["rfilename"]: _size(entry.get("size")) for entry in siblings}

    def __call__(self, name: str, size: int | None = None) -> Path:
        """Download ``name``; ``size``: what the manifest vouches for, else the file is capped as a JSON file."""
        with self.where.translate(name):
            if self.cache_only or self.revision is None or not _COMMIT.fullmatch(self.revision):
                return Path(self.hub.hf_hub_download(
                    self.where.repo_id, name, revision=self.revision, cache_dir=self.where.cache,
                    local_files_only=self.cache_only, token=self.token, force_download=self.force_download,
                    endpoint=self.where.endpoint,
                ))
            return self._download(name, self.revision, size)

    def _download(self, name: str, commit: str, size: int | None) -> Path:
        storage = Path(self.where.cache) / ("models--" + self.where.repo_id.replace("/", "--"))
        pointer = storage / "snapshots" / commit / name
        if pointer.is_file() and not self.force_download:  # a commit's files never change: no need to ask
            return pointer
        url = self.hub.hf_hub_url(self.where.repo_id, name, revision=commit, endpoint=self.where.endpoint)
        location, etag, announced = self._resolve(url, name, commit)
        cap = size if size is not None else MAX_JSON_BYTES
        if announced is not None and (announced > cap or (size is not None and announced != size)):
            raise ChecksumMismatchError(
                f"model package {self.where.name}: the Hub announces {name} at {announced:,} bytes, "
                + (f"the manifest says {size:,}" if size is not None else f"over the {cap:,} a JSON file may have")
                + "; not downloading it")
        blob = storage / "blobs" / etag
        if self.force_download or not blob.is_file():
            limit = announced if announced is not None else cap
            exchange = _Request(self.where, name, location, self._headers(location),
                                self.hub.constants.HF_HUB_DOWNLOAD_TIMEOUT, limit, redirects="any")
            exchange.into(blob, limit, exact=announced is not None or size is not None)
        _link(pointer, blob)
        return pointer

    def _resolve(self, url: str, name: str, commit: str) -> tuple[str, str, int | None]:
        """Where ``name``'s contents are served from, their ETag (the blob's name) and announced size: the HEAD
        ``get_hf_file_metadata`` makes, which follows redirects within the Hub but not to its CDN."""
        exchange = _Request(self.where, name, url, self._headers(url), self.hub.constants.HF_HUB_ETAG_TIMEOUT,
                            method="HEAD")
        with exchange.open() as response:
            self._check_answer(response, name)
            headers = response.headers
            moved = 300 <= response.getcode() < 400 and headers.get("Location")
            location = urllib.parse.urljoin(response.geturl(), headers["Location"]) if moved else response.geturl()
        etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/").strip('"')
        if not _ETAG.fullmatch(etag):
            self.where.fail(HubDownloadError, f"the Hub's answer for {name} names its content {_short(etag)}, "
                                              "which isn't an ETag")
        if headers.get("X-Repo-Commit") != commit:
            self.where.fail(HubDownloadError, f"the Hub answered for {name} from commit "
                                              f"{_short(headers.get('X-Repo-Commit'))}, not from {commit}, the commit "
                                              "its listing named")
        size = headers.get("X-Linked-Size") or headers.get("Content-Length")
        return location, etag, _size(int(size) if size and size.isdigit() else None)

    def _check_answer(self, response: Any, file: str | None) -> None:
        status = response.getcode()
        if status < 400:
            return
        code = response.headers.get("X-Error-Code") or (
            None if status != 404 else "EntryNotFound" if file else "RepoNotFound")
        kind, message = self.where.refused(f"HTTP {status}", code,
                                           _short(response.headers.get("X-Error-Message") or response.reason), file)
        self.where.fail(kind, message)

    def _headers(self, url: str) -> dict[str, str]:
        headers = dict(self.hub.utils.build_hf_headers(token=self.token))
        headers["Accept-Encoding"] = "identity"  # the announced size is the size on the wire
        # As huggingface_hub does: the token goes to the Hub only, never to the CDN a large file is served from.
        if urllib.parse.urlsplit(url).netloc != urllib.parse.urlsplit(self.where.endpoint).netloc:
            headers = {key: value for key, value in headers.items() if key.lower() != "authorization"}
        return headers


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class _Request:
    """One HTTP exchange with the Hub or its CDN, under a deadline: ``GRACE_READ_TIMEOUTS`` read timeouts plus
    ``size`` bytes at ``MIN_DOWNLOAD_RATE``. A watchdog shuts the connection when it passes, whatever the exchange
    is waiting for (the connection, the headers, the body). Only http(s) is spoken: urllib's default opener would
    follow a redirect to a file:, ftp: or data: address.

    ``redirects``: "same-host" follows redirects within the host and answers with one that leaves it (a HEAD that
    points at the CDN); "any" follows them all, without the headers given (the token stays with the Hub).
    """

    def __init__(self, where: _Where, what: str, url: str, headers: Mapping[str, str], read_timeout: float,
                 size: int = 0, method: str = "GET", redirects: str = "same-host") -> None:
        self.where, self.what, self.url, self.headers, self.method = where, what, url, headers, method
        self.host = urllib.parse.urlsplit(url).netloc or url
        self.read_timeout, self.redirects = float(read_timeout), redirects
        self.deadline_s = GRACE_READ_TIMEOUTS * self.read_timeout + size / MIN_DOWNLOAD_RATE
        self.connections: list[http.client.HTTPConnection] = []
        self.expired = threading.Event()

    @contextmanager
    def open(self) -> Iterator[Any]:
        """The answer (an error status included: its headers say what went wrong)."""
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            self.where.fail(HubDownloadError, f"the Hub sends {self.what} from {_short(self.url)}, which isn't an "
                                              "http(s) address")
        opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                        _Watched(self.connections, http.client.HTTPConnection), _WatchedTLS(self.connections),
                        urllib.request.HTTPRedirectHandler() if self.redirects == "any" else _SameHostRedirects(),
                        urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        request = urllib.request.Request(self.url, method=self.method)
        for key, value in self.headers.items():
            if self.redirects == "any":
                request.add_unredirected_header(key, value)
            else:
                request.add_header(key, value)
        watchdog = threading.Timer(self.deadline_s, self._expire)
        watchdog.daemon = True
        watchdog.start()
        self.deadline = time.monotonic() + self.deadline_s
        try:
            try:
                response = opener.open(request, timeout=self.read_timeout)
            except urllib.error.HTTPError as exc:
                response = exc
            except urllib.error.URLError as exc:  # the cause (refused, timed out) is what explains it
                reason = exc.reason if isinstance(exc.reason, BaseException) else exc
                if isinstance(reason, OSError) and not isinstance(reason, (ConnectionError, TimeoutError)):
                    # No such host, no route, a TLS failure: the Hub can't be reached, so the cache may serve.
                    raise ConnectionError(f"{self.host}: {reason}") from reason
                raise reason from exc
            with response:
                yield response
            if self.expired.is_set():  # what arrived was cut short by the watchdog, even if it parsed
                self.too_slow(None)
        except Exception as exc:
            if self.expired.is_set() and not isinstance(exc, HubTimeoutError):
                self.too_slow(exc)  # whatever the shut connection made the reader raise
            raise
        finally:
            watchdog.cancel()

    def read(self, response: Any, limit: int, announced: int | None, write: Callable[[bytes], Any]) -> None:
        """Pass the body to ``write``, refusing it past ``limit`` bytes and, when ``announced``, short of them."""
        received = 0
        while chunk := response.read1(min(CHUNK_BYTES, limit + 1 - received)):
            received += len(chunk)
            if received > limit:
                self.where.fail(HubDownloadError, f"{self.host} sent more of {self.what} than the {limit:,} bytes "
                                + ("announced" if announced is not None else "it may have")
                                + "; stopped there and removed what had arrived")
            write(chunk)
            if time.monotonic() > self.deadline:
                self.too_slow(None)
        if announced is not None and received != announced:
            self.where.fail(HubDownloadError, f"{self.host} sent {received:,} bytes of {self.what}, {announced:,} "
                                              "were announced; the partial file was removed. Retry")

    def into(self, blob: Path, limit: int, exact: bool) -> None:
        """Download into a temporary file beside ``blob``, renamed onto it when complete."""
        blob.parent.mkdir(parents=True, exist_ok=True)
        # What a killed download left: untouched for longer than a deadline, so no live download still writes it.
        for stale in blob.parent.glob(f".{blob.name}.*.incomplete"):
            with suppress(OSError):
                if time.time() - stale.stat().st_mtime > self.deadline_s:
                    stale.unlink()
        handle, partial = tempfile.mkstemp(prefix=f".{blob.name}.", suffix=".incomplete", dir=blob.parent)
        try:
            with os.fdopen(handle, "wb") as out, self.open() as response:
                if response.getcode() >= 400:
                    self.where.fail(HubDownloadError, f"{self.host} answered the download of {self.what} with HTTP "
                                                      f"{response.getcode()} {_short(response.reason)}")
                self.read(response, limit, limit if exact else None, out.write)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(partial, 0o666 & ~umask)  # as huggingface_hub leaves its blobs, not mkstemp's 0600
            os.replace(partial, blob)
        finally:
            Path(partial).unlink(missing_ok=True)

    def _expire(self) -> None:
        self.expired.set()
        for connection in self.connections:
            if connection.sock is not None:
                with suppress(OSError):  # already closed
                    connection.sock.shutdown(socket.SHUT_RDWR)

    def too_slow(self, cause: BaseException | None) -> NoReturn:
        raise HubTimeoutError(
            f"{self.where.name}: {'downloading' if self.method == 'GET' else 'asking for'} {self.what} from "
            f"{self.host} didn't finish within its deadline of {self.deadline_s:.0f} s ({GRACE_READ_TIMEOUTS} read "
            f"timeouts of {self.read_timeout:g} s"
            + (f", plus {self.deadline_s - GRACE_READ_TIMEOUTS * self.read_timeout:.0f} s for its size" if
               self.deadline_s > GRACE_READ_TIMEOUTS * self.read_timeout + 0.5 else "")
            + "); nothing partial was kept. The Hub or the network is too slow: retry later", self.where.repo_id
        ) from cause


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            return None  # answered as it is: the HEAD's Location is what it reports
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Watched(urllib.request.HTTPHandler):
    """urllib's handler, keeping each connection it opens so that a watchdog can shut it."""

    def __init__(self, connections: list[http.client.HTTPConnection], kind: type[http.client.HTTPConnection]):
        super().__init__()
        self.connections, self.kind = connections, kind

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)

    def _connection(self, host: str, **options: Any) -> http.client.HTTPConnection:
        connection = self.kind(host, **options)
        self.connections.append(connection)
        return connection


class _WatchedTLS(urllib.request.HTTPSHandler):
    def __init__(self, connections: list[http.client.HTTPConnection]):
        super().__init__()
        self.watched = _Watched(connections, http.client.HTTPSConnection)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.watched._connection, req, context=self._context)  # type: ignore[attr-defined]


def _link(pointer: Path, blob: Path) -> None:
    """``pointer`` names ``blob``, by a relative link as huggingface_hub makes them (by a copy where links fail)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    staged = pointer.with_name(f".{pointer.name}.{os.getpid()}.{threading.get_ident()}.link")
    staged.unlink(missing_ok=True)
    try:
        staged.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:
        shutil.copyfile(blob, staged)
    os.replace(staged, pointer)


def _check_layout(where: _Where, listing: Mapping[str, int | None]) -> None:
    if MANIFEST_FILE not in listing and not any(name in listing for name in OPTIMUM_FILES.values()):
        if any(name in listing for name in CHECKPOINT_FILES):
            where.fail(NotAModelPackageError, (
                "a PyTorch/transformers checkpoint, not a fastvit-detect model package. Export it on a machine with "
                f"the export extra: `fastvit-detect export {where.repo_id} --output package`, then publish it with "
                f"`fastvit-detect push package ORG/NAME` (or load the directory with Detector.load)"))
        where.fail(NotAModelPackageError, f"no {MANIFEST_FILE} and no ONNX model ({', '.join(OPTIMUM_FILES.values())})"
                                          ": not a model package")
    if CONFIG_FILE not in listing:
        raise MissingFileError(f"model package {where.name}: {CONFIG_FILE} is missing")
    for name in (MANIFEST_FILE, CONFIG_FILE, PREPROCESSOR_FILE):
        size = listing.get(name)
        # The cap a package's JSON files are read with, applied before downloading them.
        if size is not None and size > MAX_JSON_BYTES:
            raise InvalidPackageError(f"model package {where.name}: {name} is {size:,} bytes (at most "
                                      f"{MAX_JSON_BYTES:,}): not downloading it")


def _check_listed(where: _Where, listing: Mapping[str, int | None], variant: Variant, name: str,
                  size: int | None) -> None:
    """Before downloading a variant's file: the repository must hold it, at the size the manifest vouches for."""
    if name not in listing:
        raise MissingFileError(f"model package {where.name}: variant {variant.name!r} file {name} isn't in the "
                               "repository")
    listed = listing[name]
    if size is not None and listed is not None and listed != size:
        raise ChecksumMismatchError(f"model package {where.name}: {name} is {listed:,} bytes on the Hub, the "
                                    f"manifest says {size:,}; not downloading it")


# --- publishing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    repo_id: str
    url: str
    commit: str
    files: list[str]


def push(
    package_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> Pushed:
    """Publish a model package on the Hub with a generated model card (README.md), in one commit.

    The package must have a manifest and pass verification: a corrupt or unverifiable package is never
    published. Creates the repository (``private`` applies then) and the branch ``revision`` if missing. The
    uploaded manifest names the source checkpoint by its Hub id or folder name, never by a local path.
    """
    hub = _require_hub()
    if _BARE_REPO_ID.fullmatch(repo_id) is None or ".." in repo_id or "--" in repo_id:
        raise HubRepoNotFoundError(f"{repo_id!r} isn't a Hub repository id (expected org/name)", repo_id)
    package = ModelPackage.open(package_dir)
    if package.manifest is None:
        raise InvalidPackageError(f"model package {package.root}: no {MANIFEST_FILE}, so its files can't be verified "
                                  "after download; push publishes packages made by fastvit-detect export only")
    files: dict[str, Path] = {name: package.root / name for name in (CONFIG_FILE, PREPROCESSOR_FILE)}
    for name in package.variants:
        variant = package.variant(name)
        package.verify(variant)
        files.update({path.name: path for path, _, _ in variant.files})
    operations = [hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
    manifest = (json.dumps(package.public_manifest() or {}, indent=2) + "\n").encode()
    card = model_card(package, repo_id).encode()
    operations += [hub.CommitOperationAdd(path_in_repo=MANIFEST_FILE, path_or_fileobj=manifest),
                   hub.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card)]
    where = _Where(hub, repo_id, revision, None, endpoint)
    where.action = "uploading"
    api = hub.HfApi(endpoint=endpoint, token=token)
    with where.translate():
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations=operations, revision=revision,
                                 commit_message=commit_message or "Upload fastvit-detect model package")
    return Pushed(repo_id, f"{where.endpoint}/{repo_id}", info.oid, sorted([*files, MANIFEST_FILE, "README.md"]))
