// Pages that show something still under way (a dataset being validated, an evaluation or a training run queued or
// running) follow it: every element with data-live-url polls that JSON resource, and once a field the page was drawn
// with (data-live-watch: {"status": "validating"}, say, or a run's status and epoch) has changed, the page is drawn
// again where the reader was, so its report, figures and buttons follow the new state. The polite live region
// #live-status says what changed.
(() => {
  "use strict";
  const SCROLL = "live-scroll:" + window.location.pathname;
  const y = sessionStorage.getItem(SCROLL);
  if (y !== null) {
    sessionStorage.removeItem(SCROLL);
    window.scrollTo(0, Number(y));
  }
  const items = Array.from(document.querySelectorAll("[data-live-url]"));
  if (!items.length) return;
  const region = document.getElementById("live-status");

  async function changed(el) {
    try {
      const response = await fetch(el.dataset.liveUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) return false;  // a restart or a 503: ask again next time
      const body = await response.json();
      const watch = JSON.parse(el.dataset.liveWatch || "{}");
      for (const [key, value] of Object.entries(watch)) {
        if (key in body && body[key] !== value) {
          if (region) region.textContent = `${el.dataset.liveName || "Status"}: ${body.status || ""}`;
          return true;
        }
      }
    } catch (e) {
      // The server is away for a moment: ask again next time.
    }
    return false;
  }

  async function poll() {
    for (const el of items) {
      if (await changed(el)) {
        sessionStorage.setItem(SCROLL, String(window.scrollY));
        window.location.reload();
        return;
      }
    }
    window.setTimeout(poll, 1500);
  }
  window.setTimeout(poll, 1500);
})();
