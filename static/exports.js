// /exports: live progress bars for running export jobs (the share link's Copy button is copy_button.js).
// Without JS a reload shows the current progress.
(function () {
  "use strict";
  function poll(bar) {
    var row = bar.closest("tr");
    fetch(bar.getAttribute("data-job-progress-url"), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (job) {
        if (!job) { return; }
        bar.max = job.rows_total || 1;
        bar.value = job.status === "done" ? bar.max : job.rows_done;
        bar.textContent = job.percent + "%";
        var rows = row && row.querySelector("[data-job-rows]");
        if (rows) { rows.textContent = job.rows_done + " / " + job.rows_total + " rows"; }
        if (job.status === "queued" || job.status === "running") {
          window.setTimeout(function () { poll(bar); }, 1000);
        } else {
          window.location.reload();
        }
      })
      .catch(function () { window.setTimeout(function () { poll(bar); }, 5000); });
  }
  document.querySelectorAll("[data-job-progress-url]").forEach(poll);
})();
