"""Evaluations: a model version measured on a registered dataset. Pages and API side by side."""

from web.evaluations import api, pages

PAGES = pages.bp
API = api.bp
