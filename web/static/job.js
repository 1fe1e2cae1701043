// The job page: poll the job's JSON status every second until it is final (then reload once to show the
// results), and mark a row's prediction correct or wrong from the table.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const show = (v) => (v === null || v === undefined ? "—" : String(v));
  const csrf = document.querySelector('meta[name="csrf-token"]');

  // ---------------------------------------------------------------- reviews from the table
  async function review(row, label) {
    const response = await fetch(row.dataset.reviewUrl, {
      method: "PUT",
      headers: { "Content-Type": "application/json", Accept: "application/json",
                 "X-CSRFToken": csrf ? csrf.content : "" },
      body: JSON.stringify({ label: label }),
    });
    const body = await response.json().catch(() => ({}));
    const state = row.querySelector(".review-state");
    if (!response.ok) {
      state.textContent = body.error || `review not saved (${response.status})`;
      state.classList.add("err");
      return;
    }
    state.classList.remove("err");
    const r = body.review;
    state.textContent = r.correct ? "correct " : `wrong: ${r.label} `;
    const who = document.createElement("span");
    who.className = "muted";
    who.textContent = `(${r.reviewer})`;
    state.appendChild(who);
    if (body.progress) {  // the summary's counts and the corrections card's
      const counts = { "reviewed-count": "reviewed", "reviewed-wrong": "wrong", "progress-reviewed": "reviewed",
                       "progress-correct": "correct", "progress-wrong": "wrong" };
      for (const [id, key] of Object.entries(counts)) if ($(id)) $(id).textContent = body.progress[key];
      // Reviewed images can be added to a training dataset as soon as there is one.
      if ($("add-reviewed")) $("add-reviewed").disabled = !(body.progress.reviewed > 0);
    }
  }

  const table = $("results");
  if (table) {
    table.addEventListener("click", (event) => {
      const button = event.target.closest("button.agree, button.disagree");
      if (!button) return;
      review(button.closest("tr"), button.dataset.label);
    });
  }

  // ---------------------------------------------------------------- live progress
  const section = $("job");
  if (!section || section.dataset.final === "true") return;

  function render(job) {
    $("progress").max = job.total;
    $("progress").value = job.processed;
    $("progress-text").textContent = `${job.processed} / ${job.total}`;
    $("classified").textContent = job.classified;
    $("failed").textContent = job.failed;
    $("elapsed").textContent = show(job.elapsed_s);
    $("eta").textContent = show(job.eta_s);
    $("status").textContent = job.status;
    $("status").className = `status ${job.status}`;
    if (job.error) { $("job-error").textContent = job.error; $("job-error").hidden = false; }
    if (job.out_of_distribution > 0 && $("ood-banner")) {
      $("ood-text").textContent = `${job.out_of_distribution} of ${job.total} images look unlike the data this ` +
        "model was trained on: their predictions are unreliable.";
      $("ood-banner").hidden = false;
    }
  }

  async function poll() {
    try {
      const response = await fetch(section.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        if (job.final) { window.location.reload(); return; }
      }
    } catch (e) { /* a missed poll is retried on the next tick */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
})();
