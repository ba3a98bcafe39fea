"""WSGI entry point, e.g. ``gunicorn deepfake_site.wsgi --workers 1 --threads 4``.

One worker process holds one model in memory; threads share it (a Detector is thread-safe).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepfake_site.settings")
application = get_wsgi_application()
