// Poll a training run's JSON every 2 s: progress, elapsed and ETA, a small SVG curve, the log; stop when it ends.
(function () {
  "use strict";
  const section = document.getElementById("run");
  if (!section) return;
  const $ = (id) => document.getElementById(id);
  const num = (v, digits) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));
  const SVG = "http://www.w3.org/2000/svg";
  const W = 480, H = 160, PAD = 8;
  const AUC = "#2c7be5", LOSS = "#c0392b", POINTING = "#27ae60";

  function line(values, top, color) {
    // One polyline of `values` scaled so that `top` is the top edge; gaps (null) are skipped.
    const points = [];
    const step = values.length > 1 ? (W - 2 * PAD) / (values.length - 1) : 0;
    values.forEach((v, i) => {
      if (v === null || v === undefined || !(top > 0)) return;
      points.push(`${(PAD + i * step).toFixed(1)},${(H - PAD - (Math.min(v, top) / top) * (H - 2 * PAD)).toFixed(1)}`);
    });
    const el = document.createElementNS(SVG, points.length > 1 ? "polyline" : "circle");
    if (points.length > 1) {
      el.setAttribute("points", points.join(" "));
      el.setAttribute("fill", "none");
      el.setAttribute("stroke-width", "2");
    } else if (points.length === 1) {
      const [x, y] = points[0].split(",");
      el.setAttribute("cx", x); el.setAttribute("cy", y); el.setAttribute("r", "3");
      el.setAttribute("fill", color);
    }
    el.setAttribute("stroke", color);
    return el;
  }

  function draw(history) {
    const svg = $("curve");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const frame = document.createElementNS(SVG, "rect");
    frame.setAttribute("x", "0.5"); frame.setAttribute("y", "0.5");
    frame.setAttribute("width", String(W - 1)); frame.setAttribute("height", String(H - 1));
    frame.setAttribute("fill", "none"); frame.setAttribute("stroke", "#ccc");
    svg.appendChild(frame);
    const loss = history.train_loss || [];
    const auc = history.val_auc || [];
    const pointing = history.val_pointing || [];  // a run with fracture boxes: where its map points on val
    const top = Math.max(...loss.filter((v) => v !== null), 0);
    if (loss.length) svg.appendChild(line(loss, top, LOSS));
    if (auc.length) svg.appendChild(line(auc, 1, AUC));
    if (pointing.length) svg.appendChild(line(pointing, 1, POINTING));
    const labels = [["selection val ROC-AUC (one view)", AUC, 16], ["train loss", LOSS, 30]];
    if (pointing.length) labels.push(["val pointing game (boxed images)", POINTING, 44]);
    labels.forEach(([text, color, y]) => {
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", String(W - PAD)); label.setAttribute("y", String(y));
      label.setAttribute("text-anchor", "end"); label.setAttribute("font-size", "11"); label.setAttribute("fill", color);
      label.textContent = text;
      svg.appendChild(label);
    });
  }

  function render(run) {
    $("status").textContent = run.status;
    $("status").className = `status ${run.status}`;
    $("progress").max = run.epochs || 1;
    $("progress").value = run.epoch;
    $("epoch").textContent = run.epoch;
    $("epochs").textContent = run.epochs;
    $("train-loss").textContent = num(run.train_loss, 4);
    $("selection-auc").textContent = num(run.selection_val_auc, 4);
    $("val-auc").textContent = num(run.val_auc, 4);
    $("elapsed").textContent = num(run.elapsed_s, 1);
    $("eta").textContent = num(run.eta_s, 1);
    $("run-message").textContent = run.message || "";
    if (run.error) { $("run-error").textContent = run.error; $("run-error").hidden = false; }
    draw(run.history || {});
  }

  async function refreshLog() {
    const response = await fetch(section.dataset.logUrl, { headers: { Accept: "text/plain" } });
    if (response.ok) {
      const text = await response.text();
      if (text) { $("log").textContent = text; }
    }
  }

  async function poll() {
    try {
      const response = await fetch(section.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const run = await response.json();
        render(run);
        await refreshLog();
        if (run.final) { window.location.reload(); return; }
      }
    } catch (e) { /* a missed poll is retried on the next tick */ }
    setTimeout(poll, 2000);
  }

  fetch(section.dataset.statusUrl, { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : null)).then((run) => { if (run) draw(run.history || {}); }).catch(() => {});
  if (section.dataset.final !== "true") setTimeout(poll, 2000);
})();
