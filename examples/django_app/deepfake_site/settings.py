"""Settings of the example site: the seed project's page and endpoint, served by fastvit-detect (no torch).

Configured from the environment:

    FASTVIT_MODEL_DIR      model package directory (from export/export.py); required
    FASTVIT_VARIANT        auto (default), fp32 or int8
    FASTVIT_THREADS        onnxruntime intra-op threads (default: the physical cores)
    FASTVIT_MAX_UPLOAD_MB  largest image accepted (default 20)
    DJANGO_SECRET_KEY, DJANGO_DEBUG=1, DJANGO_ALLOWED_HOSTS=host1,host2
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key: set DJANGO_SECRET_KEY in production")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = ["detection"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "deepfake_site.urls"
WSGI_APPLICATION = "deepfake_site.wsgi.application"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True}]
DATABASES: dict = {}  # the site stores nothing
USE_TZ = True

FASTVIT_MODEL_DIR = os.environ.get("FASTVIT_MODEL_DIR", "")
FASTVIT_VARIANT = os.environ.get("FASTVIT_VARIANT", "auto")
FASTVIT_THREADS = int(os.environ["FASTVIT_THREADS"]) if os.environ.get("FASTVIT_THREADS") else None
FASTVIT_MAX_UPLOAD_BYTES = int(float(os.environ.get("FASTVIT_MAX_UPLOAD_MB", "20")) * 1024 * 1024)
# The image arrives base64-encoded in JSON: 4 bytes per 3, plus the JSON around it. Django refuses bigger bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = FASTVIT_MAX_UPLOAD_BYTES * 4 // 3 + 1024
