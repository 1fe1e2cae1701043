"""Model versions: the list with metrics and plots, comparisons, promotion, retirement and rollback."""

from web.models import api, pages

PAGES = pages.bp
API = api.bp
