"""Risky page actions ask first: a form that changes which model serves, retires or deletes is confirmed.

Such a form carries `data-confirm` (the question, naming the consequence) and a hidden field `confirm=ask`.
web/static/confirm.js asks the question in the browser and, once it is accepted, empties that field so that the
POST acts; dismissed, nothing is sent. Without JavaScript the POST arrives with `confirm=ask` and the route answers
with `confirm_page`: the same question and a button that sends the form again, confirmed. Requests without the
field (scripts, the JSON API, tests) act at once: the API stays one call.
"""

from __future__ import annotations

from flask import render_template, request
from flask.typing import ResponseReturnValue

ASK_FIELD = "confirm"
# Fields a confirmation page does not carry over: the ask itself and the CSRF token (the page renders a fresh one).
NOT_CARRIED = (ASK_FIELD, "csrf_token")


def asked() -> bool:
    """Whether this form POST still waits for its confirmation (it came without JavaScript)."""
    return request.form.get(ASK_FIELD) == "ask"


def confirm_page(question: str, label: str, cancel_url: str) -> ResponseReturnValue:
    """A page that asks `question` and sends the same form again, confirmed, from a button named `label`."""
    fields = [(k, v) for k, v in request.form.items(multi=True) if k not in NOT_CARRIED]
    return render_template("confirm.html", question=question, label=label, action=request.path, fields=fields,
                           cancel_url=cancel_url)
