"""Retraining schedules: the API, and the forms of the training page's schedules section."""

from web.schedules import api, pages

PAGES = pages.bp
API = api.bp
