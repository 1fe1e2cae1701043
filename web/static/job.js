// Poll the job's JSON status every second until it is final, then reload once to show the results.
(function () {
  "use strict";
  const section = document.getElementById("job");
  if (!section || section.dataset.final === "true") return;
  const $ = (id) => document.getElementById(id);
  const show = (v) => (v === null || v === undefined ? "—" : String(v));

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
