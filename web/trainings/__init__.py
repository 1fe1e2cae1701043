"""Training runs: start one on training datasets with a recipe, follow it, cancel it. Pages and API side by side."""

from web.trainings import api, pages

PAGES = pages.bp
API = api.bp
