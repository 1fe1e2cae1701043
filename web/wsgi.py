"""WSGI entry point: `gunicorn web.wsgi:app` or `flask --app web.wsgi run`."""

from web import create_app

app = create_app()
