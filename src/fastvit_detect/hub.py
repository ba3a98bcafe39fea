"""Model packages on the Hugging Face Hub: fetch one by id into the standard HF cache, publish one with a card.

Needs the ``hub`` extra (``huggingface_hub``, torch-free). This module imports it only when a download or push is
asked for, so the runtime imports, and loads local packages, without it.

A fetch reads the repository's listing, then the manifest and configs; it chooses the variant exactly as
:meth:`~fastvit_detect.Detector.load` would, and downloads that variant's graph and weights only. The snapshot
folder it leaves in the cache is an ordinary package directory, so :class:`~fastvit_detect.ModelPackage` opens it
and verifies the sha256s with the same code as for a local directory. Every failure of the Hub, the network or
the cache becomes a :class:`~fastvit_detect.errors.HubError` subclass naming the repository and what to do.
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
    commit = None
    if not (local_files_only or hub.constants.HF_HUB_OFFLINE):
        try:
            with where.translate():
                # The metadata timeout huggingface_hub uses for its own HEAD calls; model_info has none by default.
                info = hub.HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, token=token,
                                                               files_metadata=True,
                                                               timeout=hub.constants.HF_HUB_ETAG_TIMEOUT)
        except HubOfflineError as exc:
            if force_download:
                raise
            # As huggingface_hub does for single files: when the Hub can't be reached, the cache still serves.
            where.unreachable = str(exc).removeprefix(f"{where.name}: ")
        else:
            commit = info.sha
            if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
                where.fail(HubDownloadError, f"the Hub's listing names no valid commit ({_short(commit)})")
            listing = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
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
        if isinstance(exc, errors.GatedRepoError):
            return HubAuthError, ("a gated repository: request access on its page, then pass a token of the account "
                                  f"that has it (token=..., --token, HF_TOKEN or `hf auth login`) ({status})")
        if status in ("HTTP 401", "HTTP 403"):
            return HubAuthError, (f"the Hub wants credentials it didn't get or refused ({status}): the repository is "
                                  "private or gated (or doesn't exist), or the token is invalid or may not write here. "
                                  "Pass a valid token (token=..., --token, HF_TOKEN or `hf auth login`)")
        if isinstance(exc, errors.RepositoryNotFoundError):
            return HubRepoNotFoundError, (f"no such model repository on {self.endpoint} ({status}); check the id, or "
                                          "for a local package give an existing directory")
        if isinstance(exc, errors.RevisionNotFoundError):
            return HubRevisionNotFoundError, (f"the repository has no revision {self.revision!r} (a branch, tag or "
                                              f"commit) ({status})")
        if isinstance(exc, errors.EntryNotFoundError):
            return HubDownloadError, f"the repository has no file {what}({status})"
        if isinstance(exc, errors.HfHubHTTPError):
            return HubDownloadError, (f"the Hub answered {('for ' + what) if what else ''}with {status}: "
                                      f"{_first_line(exc)}")
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
    return f"{re.sub(r'<[^>]*>:? ?', '', _first_line(exc))[:200]} ({type(exc).__name__})"


# A file's download must end within GRACE_READ_TIMEOUTS x HF_HUB_DOWNLOAD_TIMEOUT (60 s by default) plus its
# announced size at MIN_DOWNLOAD_RATE: the read timeout alone restarts with every byte, so a server trickling one
# byte a second would hold a fetch for days.
GRACE_READ_TIMEOUTS = 6
MIN_DOWNLOAD_RATE = 100_000  # bytes per second: a 350 MB fp32 ViT-B gets an hour, a manifest a minute
CHUNK_BYTES = 1 << 20
_ETAG = re.compile(r"[0-9A-Za-z_-]{1,128}")  # the blob's file name in the cache: no path, no dot


class _Downloader:
    """Files of one commit into the HF cache layout (``models--org--name/blobs/<etag>``, linked from
    ``snapshots/<commit>/<file>``), so huggingface_hub, transformers and an offline load find them.

    huggingface_hub's resolution (the HEAD that names the blob, the commit and the size) is used as is; the body is
    streamed here, because huggingface_hub writes all a server sends before comparing sizes, and bounds each read
    but not the whole transfer. Here a download stops at the announced size (or at the cap for a JSON file) and at
    an overall deadline, and leaves no partial file behind.
    """

    def __init__(self, hub: ModuleType, where: _Where, revision: str | None, cache_only: bool,
                 token: str | bool | None, force_download: bool):
        self.hub, self.where, self.revision, self.cache_only = hub, where, revision, cache_only
        self.token, self.force_download = token, force_download

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
        metadata = self.hub.get_hf_file_metadata(url, token=self.token,
                                                 timeout=self.hub.constants.HF_HUB_ETAG_TIMEOUT)
        etag, announced = metadata.etag, metadata.size
        if not isinstance(etag, str) or not _ETAG.fullmatch(etag):
            self.where.fail(HubDownloadError, f"the Hub's answer for {name} names its content {_short(etag)}, "
                                              "which isn't an ETag")
        if metadata.commit_hash != commit:
            self.where.fail(HubDownloadError, f"the Hub answered for {name} from commit {_short(metadata.commit_hash)},"
                                              f" not from {commit}, the commit its listing named")
        cap = size if size is not None else MAX_JSON_BYTES
        if announced is not None and (announced > cap or (size is not None and announced != size)):
            raise ChecksumMismatchError(
                f"model package {self.where.name}: the Hub announces {name} at {announced:,} bytes, "
                + (f"the manifest says {size:,}" if size is not None else f"over the {cap:,} a JSON file may have")
                + "; not downloading it")
        blob = storage / "blobs" / etag
        if self.force_download or not blob.is_file():
            _Transfer(self.where, name, metadata.location, self._headers(metadata.location),
                      announced if announced is not None else cap, exact=announced is not None).into(blob)
        _link(pointer, blob)
        return pointer

    def _headers(self, url: str) -> dict[str, str]:
        headers = dict(self.hub.utils.build_hf_headers(token=self.token))
        headers["Accept-Encoding"] = "identity"  # the announced size is the size on the wire
        # As huggingface_hub does: the token goes to the Hub only, never to the CDN a large file is served from.
        if urllib.parse.urlsplit(url).netloc != urllib.parse.urlsplit(self.where.endpoint).netloc:
            headers = {key: value for key, value in headers.items() if key.lower() != "authorization"}
        return headers


class _Transfer:
    """One GET, written to a temporary file beside ``blob`` and renamed onto it when complete: at most ``limit``
    bytes are written, and a watchdog shuts the connection at the deadline, whatever stage it is in."""

    def __init__(self, where: _Where, name: str, url: str, headers: Mapping[str, str], limit: int,
                 exact: bool) -> None:
        self.where, self.name, self.url, self.headers, self.limit, self.exact = where, name, url, headers, limit, exact
        self.host = urllib.parse.urlsplit(url).netloc or url
        self.read_timeout = float(where.hub.constants.HF_HUB_DOWNLOAD_TIMEOUT)
        self.grace_s = GRACE_READ_TIMEOUTS * self.read_timeout
        self.deadline_s = self.grace_s + limit / MIN_DOWNLOAD_RATE
        self.connections: list[http.client.HTTPConnection] = []
        self.expired = threading.Event()

    def into(self, blob: Path) -> None:
        blob.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{blob.name}.", suffix=".incomplete", dir=blob.parent)
        watchdog = threading.Timer(self.deadline_s, self._expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            with os.fdopen(handle, "wb") as out:
                self._copy(out, time.monotonic() + self.deadline_s)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(partial, 0o666 & ~umask)  # as huggingface_hub leaves its blobs, not mkstemp's 0600
            os.replace(partial, blob)
        except BaseException as exc:
            Path(partial).unlink(missing_ok=True)
            if self.expired.is_set() and isinstance(exc, Exception) and not isinstance(exc, HubTimeoutError):
                self._too_slow(exc)  # whatever the shut connection made the reader raise
            raise
        finally:
            watchdog.cancel()

    def _copy(self, out: Any, deadline: float) -> None:
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise HubDownloadError(f"{self.where.name}: the Hub sends {self.name} from {_short(self.url)}, which "
                                   "isn't an http(s) address", self.where.repo_id)
        # No file:, ftp: or data: handlers, unlike urllib's default opener: a redirect can't read local files.
        opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                        _Watched(self.connections, http.client.HTTPConnection), _WatchedTLS(self.connections),
                        urllib.request.HTTPRedirectHandler(), urllib.request.HTTPDefaultErrorHandler(),
                        urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        request = urllib.request.Request(self.url, method="GET")
        for key, value in self.headers.items():
            request.add_unredirected_header(key, value)  # not forwarded if the server redirects elsewhere
        try:
            response = opener.open(request, timeout=self.read_timeout)
        except urllib.error.HTTPError as exc:
            raise HubDownloadError(f"{self.where.name}: {self.host} answered the download of {self.name} with "
                                   f"HTTP {exc.code} {exc.reason}", self.where.repo_id) from exc
        except urllib.error.URLError as exc:  # the cause (refused, timed out) is what explains it
            raise (exc.reason if isinstance(exc.reason, BaseException) else exc) from exc
        written = 0
        with response:
            while chunk := response.read1(min(CHUNK_BYTES, self.limit + 1 - written)):
                written += len(chunk)
                if written > self.limit:
                    raise HubDownloadError(
                        f"{self.where.name}: {self.host} sent more of {self.name} than the {self.limit:,} bytes "
                        + ("announced" if self.exact else "a JSON file may have")
                        + "; stopped there and removed the partial file", self.where.repo_id)
                out.write(chunk)
                if time.monotonic() > deadline:
                    self._too_slow(None)
        if self.exact and written != self.limit:
            raise HubDownloadError(f"{self.where.name}: {self.host} sent {written:,} bytes of {self.name}, "
                                   f"{self.limit:,} were announced; the partial file was removed. Retry",
                                   self.where.repo_id)

    def _expire(self) -> None:
        self.expired.set()
        for connection in self.connections:
            if connection.sock is not None:
                with suppress(OSError):  # already closed
                    connection.sock.shutdown(socket.SHUT_RDWR)

    def _too_slow(self, cause: BaseException | None) -> NoReturn:
        raise HubTimeoutError(
            f"{self.where.name}: downloading {self.name} from {self.host} didn't finish within its deadline of "
            f"{self.deadline_s:.0f} s ({GRACE_READ_TIMEOUTS} x HF_HUB_DOWNLOAD_TIMEOUT, plus its {self.limit:,} "
            f"bytes at {MIN_DOWNLOAD_RATE // 1000} kB/s); the partial file was removed. The Hub or the network is "
            "too slow: retry later", self.where.repo_id) from cause


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
