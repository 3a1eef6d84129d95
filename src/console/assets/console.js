// mgpass-webhooks console: served by the binary (/static/console.js). Confirmations for
// destructive forms and the progress of a replay job; every page works without it.
"use strict";

document.addEventListener("submit", (ev) => {
  const form = ev.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    ev.preventDefault();
  }
});

function pollJob(box) {
  const id = box.getAttribute("data-job");
  const set = (sel, text) => { const el = document.getElementById(sel); if (el) el.textContent = text; };
  const tick = async () => {
    let job;
    try {
      const r = await fetch("/api/replay/" + encodeURIComponent(id), { credentials: "same-origin" });
      if (!r.ok) { setTimeout(tick, 2000); return; }
      job = await r.json();
    } catch (e) { setTimeout(tick, 2000); return; }
    const bar = document.getElementById("job-progress");
    bar.max = Math.max(job.planned, 1);
    bar.value = job.produced;
    set("job-produced", job.produced);
    set("job-planned", job.planned);
    set("job-state", job.state);
    set("job-report", job.report);
    if (job.state === "done") {
      set("job-detail", "run " + job.run_id + ": " + job.produced + " of " + job.planned + " re-injected, " + job.skipped + " skipped");
    } else if (job.state === "failed") {
      set("job-detail", job.error);
    }
    box.setAttribute("data-state", job.state);
    if (job.state === "running") setTimeout(tick, 500);
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("job");
  if (box && box.getAttribute("data-state") === "running") pollJob(box);
});
