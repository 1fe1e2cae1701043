"""Datasets: register a server folder or upload a labelled zip, read the validation report, split, gate."""

from web.datasets import api, pages

PAGES = pages.bp
API = api.bp
