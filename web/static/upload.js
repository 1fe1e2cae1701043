// Send the chosen folder and files to POST /api/jobs with upload progress, then open the job page.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  const dirInput = document.getElementById("dir-input");
  const fileInput = document.getElementById("file-input");
  const selection = document.getElementById("selection");
  const submit = document.getElementById("submit");
  const box = document.getElementById("upload-progress");
  const bar = document.getElementById("upload-bar");
  const text = document.getElementById("upload-text");
  const errorBox = document.getElementById("upload-error");

  function chosen() {
    // A folder's files carry their path inside it; keep it as the part's filename (the server shows it).
    const dirFiles = Array.from(dirInput.files).map((f) => [f, f.webkitRelativePath || f.name]);
    const looseFiles = Array.from(fileInput.files).map((f) => [f, f.name]);
    return dirFiles.concat(looseFiles);
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function describe() {
    const files = chosen();
    const bytes = files.reduce((n, [f]) => n + f.size, 0);
    selection.textContent = files.length
      ? `${files.length} file(s) chosen, ${(bytes / 1048576).toFixed(1)} MiB.`
      : "Nothing chosen yet.";
  }
  dirInput.addEventListener("change", describe);
  fileInput.addEventListener("change", describe);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    const files = chosen();
    if (!files.length) {
      showError("Choose a folder, image files or zip archives first.");
      return;
    }
    const limit = Number(form.dataset.maxBytes);
    const bytes = files.reduce((n, [f]) => n + f.size, 0);
    if (limit && bytes > limit) {
      showError(`The upload is ${(bytes / 1048576).toFixed(0)} MiB, more than the limit of ${(limit / 1048576).toFixed(0)} MiB per upload.`);
      return;
    }
    const data = new FormData();
    for (const [file, name] of files) data.append("files", file, name);
    const xhr = new XMLHttpRequest();  // fetch() cannot report upload progress
    xhr.open("POST", form.action);
    // The page's session cookie authenticates the upload; the CSRF token proves the page sent it.
    const csrf = document.querySelector('meta[name="csrf-token"]');
    if (csrf) xhr.setRequestHeader("X-CSRFToken", csrf.content);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        bar.value = Math.round((100 * e.loaded) / e.total);
        text.textContent = `Uploading… ${bar.value}%`;
      }
    });
    xhr.upload.addEventListener("load", () => { text.textContent = "Storing files and queueing the job…"; });
    xhr.addEventListener("load", () => {
      const body = xhr.response || {};
      if (xhr.status === 201 || (xhr.status === 503 && body.id)) {
        window.location.assign(`/jobs/${body.id}`);
        return;
      }
      box.hidden = true;
      submit.disabled = false;
      showError(body.error || `The upload failed (HTTP ${xhr.status}).`);
    });
    xhr.addEventListener("error", () => {
      box.hidden = true;
      submit.disabled = false;
      showError("The upload was interrupted (network error, or the server refused a too-large upload).");
    });
    submit.disabled = true;
    box.hidden = false;
    xhr.send(data);
  });
})();
