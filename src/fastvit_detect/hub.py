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

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
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

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


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
    return _split_reference(text, _BARE_REPO_ID)


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
    selected = list(select(package)) if select is not None else []
    for variant in selected:
        for path, _sha256, size in variant.files:
            if listing is not None:
                _check_listed(where, listing, variant, path.name, size)
            download(path.name)
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

    def _explain(self, exc: Exception, file: str | None) -> tuple[type[HubError], str]:
        errors = self.hub.errors
        what = f"{file} " if file else ""
        status = _status(exc)
        if isinstance(exc, errors.LocalEntryNotFoundError):
            if self.hub.constants.HF_HUB_OFFLINE:
                reason = "offline mode is on (HF_HUB_OFFLINE=1)"
            elif self.unreachable or exc.__cause__ is not None:
                reason = self.unreachable or f"the Hub at {self.endpoint} can't be reached ({_describe(exc.__cause__)})"
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
            return HubOfflineError, f"the Hub at {self.endpoint} can't be reached ({_describe(exc)})"
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


class _Downloader:
    def __init__(self, hub: ModuleType, where: _Where, revision: str | None, cache_only: bool,
                 token: str | bool | None, force_download: bool):
        self.hub, self.where, self.revision, self.cache_only = hub, where, revision, cache_only
        self.token, self.force_download = token, force_download

    def __call__(self, name: str) -> Path:
        with self.where.translate(name):
            return Path(self.hub.hf_hub_download(
                self.where.repo_id, name, revision=self.revision, cache_dir=self.where.cache,
                local_files_only=self.cache_only, token=self.token, force_download=self.force_download,
                endpoint=self.where.endpoint,
            ))


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
