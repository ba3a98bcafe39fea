"""fastvit-detect: torch-free CPU inference for Vision-Transformer deepfake detectors.

```python
from fastvit_detect import Detector

detector = Detector.load("deepfake_vit_onnx")        # a package made by fastvit-detect export
detector = Detector.from_pretrained("org/name")      # or one published on the Hub (the hub extra)
detector.predict("face.jpg").label                   # "Real" or "Fake"
```
"""

from .detector import Detector, FacesResult, ImageResult, Prediction
from .errors import (
    BackendError,
    ChecksumMismatchError,
    EmptyImageError,
    FastVitDetectError,
    HubAuthError,
    HubDownloadError,
    HubError,
    HubOfflineError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubTimeoutError,
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    IncompatibleModelError,
    InputError,
    InvalidOptionError,
    InvalidPackageError,
    MissingExtraError,
    MissingFaceDetectorError,
    MissingFileError,
    ModelOutputError,
    ModelPackageError,
    NotAModelPackageError,
    PackageNotFoundError,
    ProviderError,
    UnsupportedInputError,
    UnsupportedPreprocessorError,
    VariantNotFoundError,
    WorkerCrashError,
)
from .explain import Explanation
from .faces import Face
from .media import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image
from .package import ModelPackage
from .preprocess import Preprocessor

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "BackendError",
    "ChecksumMismatchError",
    "Detector",
    "EmptyImageError",
    "Explanation",
    "Face",
    "FacesResult",
    "FastVitDetectError",
    "HubAuthError",
    "HubDownloadError",
    "HubError",
    "HubOfflineError",
    "HubRepoNotFoundError",
    "HubRevisionNotFoundError",
    "HubTimeoutError",
    "ImageDecodeError",
    "ImageNotFoundError",
    "ImageResult",
    "ImageTooLargeError",
    "IncompatibleModelError",
    "InputError",
    "InvalidOptionError",
    "InvalidPackageError",
    "MissingExtraError",
    "MissingFaceDetectorError",
    "MissingFileError",
    "ModelOutputError",
    "ModelPackage",
    "ModelPackageError",
    "NotAModelPackageError",
    "PackageNotFoundError",
    "Prediction",
    "Preprocessor",
    "ProviderError",
    "UnsupportedInputError",
    "UnsupportedPreprocessorError",
    "VariantNotFoundError",
    "WorkerCrashError",
    "__version__",
    "load_image",
]
