// Risky forms ask first (web/confirm.py): a form with data-confirm shows its question; accepted, the hidden
// field confirm=ask is emptied so the server acts at once, and the form is sent once only (a double click
// sends nothing more); dismissed, nothing is sent. Loaded from a file: the pages' CSP allows no inline script.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-confirm")) {
      return;
    }
    if (form.dataset.sent === "1") {  // already confirmed and on its way
      event.preventDefault();
      return;
    }
    if (!window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
      return;
    }
    var ask = form.querySelector("input[name=confirm]");
    if (ask) {
      ask.value = "";
    }
    form.dataset.sent = "1";
  });
  // A page brought back from the back-forward cache may be sent again.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) { delete form.dataset.sent; });
  });
})();
