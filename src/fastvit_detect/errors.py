"""The one exception hierarchy of fastvit-detect.

Every error a user can cause derives from :class:`FastVitDetectError`, so a server can catch one class and map
it to a client error. Input errors are also ``ValueError``, so generic handlers written for bad arguments keep
working.
"""

from __future__ import annotations


class FastVitDetectError(Exception):
    """Base class of every error raised on purpose by fastvit-detect."""


# --- images -------------------------------------------------------------------------------------------------


class InputError(FastVitDetectError, ValueError):
    """An image given to the detector can't be used. ``source`` describes which one."""

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class ImageNotFoundError(InputError):
    """A path that doesn't exist, isn't a regular file (a directory, FIFO, device), or can't be read."""


class EmptyImageError(InputError):
    """Zero bytes where an image was expected."""


class ImageDecodeError(InputError):
    """Bytes that aren't an image Pillow can decode: unknown format, truncated or corrupt data."""


class ImageTooLargeError(InputError):
    """An image over the configured caps: more pixels (decompression-bomb guard) or more bytes than allowed."""


class UnsupportedInputError(InputError):
    """An input of a type, shape or dtype the detector doesn't accept."""


# --- videos: an input too, so a handler of bad images handles bad clips (a server's 413/422 included) -----------


class VideoDecodeError(ImageDecodeError):
    """Bytes that aren't a video this runtime decodes: an unknown or refused container, truncated or corrupt data,
    timestamps that can't be sampled."""


class NoVideoStreamError(VideoDecodeError):
    """A container without a video stream to sample: audio only (cover art doesn't count), no streams at all, or
    only an attachment (a container nested in a container)."""


class VideoTooLargeError(ImageTooLargeError):
    """A video over a cap of :class:`fastvit_detect.video.VideoLimits`: bytes, duration (measured from its packets,
    not its header), frame resolution, packets, decoded frames or decoding time."""


# --- model packages -----------------------------------------------------------------------------------------


class ModelPackageError(FastVitDetectError):
    """A model package that can't be opened or doesn't match what the runtime expects."""


class PackageNotFoundError(ModelPackageError):
    """The package directory doesn't exist or isn't a directory."""


class MissingFileError(ModelPackageError):
    """A file the package needs is absent."""


class MissingFaceDetectorError(MissingFileError):
    """Faces were asked for, but the model package holds no (or not all of the) face detector's files."""


class InvalidPackageError(ModelPackageError):
    """A package file is present but malformed (bad JSON, missing keys, unsupported format version)."""


class ChecksumMismatchError(ModelPackageError):
    """A model file's sha256 differs from the one recorded in the manifest."""


class VariantNotFoundError(ModelPackageError):
    """The requested variant (fp32, int8, ...) isn't in the package."""


class IncompatibleModelError(ModelPackageError):
    """The ONNX graph doesn't fit the package: input shape, output width or preprocessing mismatch."""


class BackendError(ModelPackageError):
    """The runtime a variant needs can't run it: OpenVINO failed to compile the graph, or the manifest names a
    runtime this fastvit-detect doesn't know."""


class UnsupportedPreprocessorError(ModelPackageError):
    """The preprocessor config names an image processor or option this runtime doesn't reproduce."""


class ModelOutputError(FastVitDetectError):
    """The model gave no usable answer for an image: the session call failed, or its logits weren't finite.

    Never turned into a verdict. In ``errors="return"`` results it stands in the image's place like an
    :class:`InputError`, but it is the model's fault, not the input's (a server answers 500, not 4xx).
    """

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class InvalidOptionError(FastVitDetectError, ValueError):
    """An option out of its range or of the wrong kind: a method parameter, a sample count, a grid size."""


class ProviderError(FastVitDetectError):
    """An onnxruntime execution provider that isn't available in this installation."""


class MissingExtraError(FastVitDetectError, ImportError):
    """A feature needs an optional dependency that isn't installed; the message names the extra to install."""


# --- the Hugging Face Hub -----------------------------------------------------------------------------------
# Fetching a package is opening one from elsewhere, so the fetch errors that mean "there is no such package here"
# are also PackageNotFoundError / MissingFileError: code that handles a bad local path handles a bad Hub id too.


class HubError(FastVitDetectError):
    """Fetching a model package from the Hugging Face Hub, or publishing one to it, failed."""

    def __init__(self, message: str, repo_id: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id


class HubRepoNotFoundError(HubError, PackageNotFoundError):
    """No such repository (HTTP 404), or a malformed repository id."""


class HubRevisionNotFoundError(HubError, PackageNotFoundError):
    """The repository has no such branch, tag or commit."""


class HubAuthError(HubError):
    """The Hub wants credentials it didn't get or refused them (HTTP 401/403): a private or gated repository, an
    invalid token, or no write access for a push."""


class HubOfflineError(HubError):
    """The Hub can't be reached (offline mode, network down, timeout) and the files aren't in the local cache."""


class HubTimeoutError(HubOfflineError):
    """A request to the Hub (a download, a HEAD, the listing) didn't finish within its overall deadline: the Hub, or
    a server posing as it, answers too slowly."""


class HubDownloadError(HubError):
    """A transfer failed part-way (a partial download, a server error) or the Hub's answer made no sense."""


class NotAModelPackageError(HubError, MissingFileError):
    """The repository exists but holds no ONNX model package: a PyTorch checkpoint, for instance."""


# --- serving ------------------------------------------------------------------------------------------------


class UploadTooLargeError(InputError):
    """A request body over a server's upload limit."""


class BadRequestError(InputError):
    """A request without a usable image: missing field, malformed JSON, multipart or base64."""


class RequestTimeoutError(InputError):
    """A client that sent its request body too slowly for the server's body timeout."""


class ServerBusyError(FastVitDetectError):
    """The inference queue is full (or the server is stopping): retry later."""


class WorkerCrashError(FastVitDetectError):
    """A worker process (a Ray actor) died every time it classified this image on its own: a decoder crash or
    the memory limit, most likely. Recorded in the image's place so one image can't stall a job forever."""


class ClusterUnreachableError(FastVitDetectError):
    """The Ray cluster to join (``--address``) refused the connection, or didn't let this process join within the
    timeout: nothing listens there, a firewall drops the packets, or what listens isn't a Ray head."""
