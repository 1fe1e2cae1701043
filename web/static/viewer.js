// The image viewer: zoom (wheel, buttons, + -) and pan (drag); window and level (sliders, shift-drag) through
// the page's SVG filter; the heatmap overlay (fetched once, 202 while the worker computes it) with its opacity;
// review buttons; previous/next with the arrow keys. No framework, nothing inline (CSP script-src 'self').
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const viewer = $("viewer");
  if (!viewer) return;
  const stage = $("stage"), canvas = $("canvas"), xray = $("xray"), overlay = $("heatmap");
  const csrf = document.querySelector('meta[name="csrf-token"]');
  const remembered = window.sessionStorage;  // the overlay's state follows the reader from image to image

  // ---------------------------------------------------------------- zoom and pan
  const view = { scale: 1, x: 0, y: 0, fit: 1 };
  function apply() {
    canvas.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  }
  function reset() {
    const w = xray.naturalWidth || 1, h = xray.naturalHeight || 1;
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    view.fit = Math.min(stage.clientWidth / w, stage.clientHeight / h);
    view.scale = view.fit;
    view.x = (stage.clientWidth - w * view.scale) / 2;
    view.y = (stage.clientHeight - h * view.scale) / 2;
    apply();
  }
  function zoom(factor, cx, cy) {
    const next = Math.min(Math.max(view.scale * factor, view.fit / 4), view.fit * 16);
    if (cx === undefined) { cx = stage.clientWidth / 2; cy = stage.clientHeight / 2; }
    view.x = cx - (cx - view.x) * (next / view.scale);
    view.y = cy - (cy - view.y) * (next / view.scale);
    view.scale = next;
    apply();
  }
  function undecodable() {
    // Nothing to look at (a file that does not decode): no broken-image box, no display controls.
    canvas.hidden = true;
    $("display-controls").hidden = true;
    stage.classList.add("empty");
    note("This file cannot be shown as an image.");
  }
  // The image may have loaded, or failed, before this script ran: its events are then past, its state is not.
  if (xray.complete && xray.naturalWidth) reset(); else xray.addEventListener("load", reset);
  if (xray.complete && !xray.naturalWidth) undecodable(); else xray.addEventListener("error", undecodable);
  window.addEventListener("resize", reset);
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const box = stage.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - box.left, e.clientY - box.top);
  }, { passive: false });

  // Drag pans; shift-drag sets window (left-right) and level (up-down), as on a reading workstation.
  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, shift: e.shiftKey,
             w: Number($("window").value), l: Number($("level").value) };
    stage.setPointerCapture(e.pointerId);
  });
  stage.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (drag.shift) {
      $("window").value = String(Math.min(100, Math.max(2, drag.w + dx / 4)));
      $("level").value = String(Math.min(100, Math.max(0, drag.l - dy / 4)));
      windowLevel();
    } else {
      view.x = drag.vx + dx;
      view.y = drag.vy + dy;
      apply();
    }
  });
  stage.addEventListener("pointerup", () => { drag = null; });
  $("zoom-in").addEventListener("click", () => zoom(1.25));
  $("zoom-out").addEventListener("click", () => zoom(0.8));
  $("reset-view").addEventListener("click", () => { $("window").value = "100"; $("level").value = "50";
    windowLevel(); reset(); });

  // ---------------------------------------------------------------- window and level
  // Gray values inside [level - window/2, level + window/2] are stretched over the whole display range.
  function windowLevel() {
    const w = Number($("window").value) / 100, l = Number($("level").value) / 100;
    for (const id of ["wl-r", "wl-g", "wl-b"]) {
      $(id).setAttribute("slope", String(1 / w));
      $(id).setAttribute("intercept", String(0.5 - l / w));
    }
  }
  $("window").addEventListener("input", windowLevel);
  $("level").addEventListener("input", windowLevel);

  function note(text) {
    $("stage-note").textContent = text;
    $("stage-note").hidden = !text;
  }

  // ---------------------------------------------------------------- heatmap overlay
  const toggle = $("heatmap-toggle"), opacity = $("heatmap-opacity");
  let heatmapLoaded = false, heatmapWaiting = false;
  function status(text) { if ($("heatmap-status")) $("heatmap-status").textContent = text; }

  async function loadHeatmap() {
    if (heatmapLoaded || heatmapWaiting) return;
    heatmapWaiting = true;
    status("Computing the heatmap…");
    try {
      for (;;) {
        const response = await fetch(viewer.dataset.heatmapUrl, { headers: { Accept: "image/png, application/json" } });
        if (response.status === 200) {
          // Ready: the overlay reads the stored PNG itself (the CSP allows images from 'self' only, not blob:).
          overlay.src = viewer.dataset.heatmapUrl;
          heatmapLoaded = true;
          status("");
          break;
        }
        if (response.status !== 202) {
          const body = await response.json().catch(() => ({}));
          status(body.error || `No heatmap (${response.status}).`);
          toggle.checked = false;
          break;
        }
        await new Promise((done) => setTimeout(done, 1000));
      }
    } catch (e) {
      status("The heatmap could not be fetched.");
    } finally {
      heatmapWaiting = false;
      showHeatmap();
    }
  }
  function showHeatmap() {
    if (!toggle) return;
    overlay.style.opacity = String(Number(opacity.value) / 100);
    overlay.hidden = !(toggle.checked && heatmapLoaded);
    remembered.setItem("heatmap", toggle.checked ? "on" : "off");
    remembered.setItem("heatmap-opacity", opacity.value);
  }
  if (toggle) {
    opacity.value = remembered.getItem("heatmap-opacity") || opacity.value;
    toggle.checked = remembered.getItem("heatmap") === "on";
    toggle.addEventListener("change", () => { if (toggle.checked) loadHeatmap(); showHeatmap(); });
    opacity.addEventListener("input", showHeatmap);
    if (toggle.checked) loadHeatmap();
  }

  // ---------------------------------------------------------------- review
  async function review(label) {
    const response = await fetch(viewer.dataset.reviewUrl, {
      method: "PUT",
      headers: { "Content-Type": "application/json", Accept: "application/json",
                 "X-CSRFToken": csrf ? csrf.content : "" },
      body: JSON.stringify({ label: label }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $("review-state").textContent = body.error || `Not saved (${response.status}).`; return; }
    const r = body.review;
    $("review-state").textContent = `${r.correct ? "Correct" : `Wrong: ${r.label}`} — ${r.reviewer}, ` +
      `${r.reviewed_at.slice(0, 16).replace("T", " ")} UTC`;
  }
  for (const id of ["mark-correct", "mark-wrong"]) {
    if ($(id)) $(id).addEventListener("click", () => review($(id).dataset.label));
  }

  // ---------------------------------------------------------------- keyboard
  // The shortcuts can be turned off (WCAG 2.1.4): a reader using speech input or a screen reader's own keys
  // must not mark images or leave the page by accident. The choice is kept in localStorage across visits.
  const keysToggle = $("keys-toggle");
  const KEYS = "viewer-shortcuts";
  function keysOn() { return !keysToggle || keysToggle.checked; }
  if (keysToggle) {
    try { keysToggle.checked = window.localStorage.getItem(KEYS) !== "off"; } catch (e) { /* storage refused */ }
    keysToggle.addEventListener("change", () => {
      try { window.localStorage.setItem(KEYS, keysToggle.checked ? "on" : "off"); } catch (e) { /* not kept */ }
    });
  }
  function go(url) { if (url) window.location.assign(url); }
  document.addEventListener("keydown", (e) => {
    if (!keysOn()) return;
    if (e.target instanceof HTMLInputElement && e.target.type !== "checkbox" && e.target.type !== "range") return;
    // A slider's arrow keys move the slider, not to another image.
    if (e.target instanceof HTMLInputElement && e.target.type === "range" && e.key.startsWith("Arrow")) return;
    if (e.target instanceof HTMLSelectElement || e.target instanceof HTMLTextAreaElement) return;
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const actions = {
      ArrowRight: () => go(viewer.dataset.nextUrl), ArrowLeft: () => go(viewer.dataset.prevUrl),
      j: () => go(viewer.dataset.nextUrl), k: () => go(viewer.dataset.prevUrl),
      Escape: () => go(viewer.dataset.backUrl),
      "+": () => zoom(1.25), "=": () => zoom(1.25), "-": () => zoom(0.8), 0: () => reset(),
      c: () => $("mark-correct") && $("mark-correct").click(), w: () => $("mark-wrong") && $("mark-wrong").click(),
      h: () => { if (toggle) { toggle.checked = !toggle.checked; toggle.dispatchEvent(new Event("change")); } },
    };
    const action = actions[e.key];
    if (action) { e.preventDefault(); action(); }
  });
  stage.focus();
  viewer.dataset.ready = "true";  // every control is wired (tests wait for this)
})();
