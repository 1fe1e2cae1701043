"""Jobs: an upload becomes a job; its images, results, reviews and heatmaps. Pages and API side by side.

`pages.bp` holds the HTML routes, `api.bp` the JSON ones (in the OpenAPI document); images.py and reviews.py
add their routes to both. The upload logic is intake.py (rows, then the broker) over ingest.py (files).
"""

from web.jobs import api, deliveries, images, pages, reviews

PAGES = pages.bp
API = api.bp
__all__ = ["API", "PAGES", "deliveries", "images", "reviews"]
