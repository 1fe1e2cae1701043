"""WSGI entry point: `gunicorn web.wsgi:app` or `flask --app web.wsgi run`."""

from fracture import logs
from fracture.config import get_settings
from web import create_app

settings = get_settings()
logs.configure(settings, "web")  # LOG_FORMAT's lines; gunicorn's own loggers too
app = create_app({"FRACTURE_SETTINGS": settings})
