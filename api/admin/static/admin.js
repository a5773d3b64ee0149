// Kiln admin: small progressive enhancement. Every page works without it.
(function () {
  "use strict";
  const liveUrl = () => document.body.dataset.liveUrl;

  function update(el, job) {
    const badge = el.querySelector('[data-role="status"]');
    if (badge && badge.textContent !== job.status) {
      badge.textContent = job.status;
      badge.className = "badge s-" + job.status;
    }
    const bar = el.querySelector('[data-role="progress"] .bar');
    if (bar) {
      const pct = job.total ? (100 * job.step / job.total) : (job.status === "succeeded" ? 100 : 0);
      bar.style.width = pct.toFixed(0) + "%";
      bar.className = "bar s-" + job.status;
    }
    const steps = el.querySelector('[data-role="steps"]');
    if (steps) steps.textContent = job.step + "/" + (job.total || "–");
    const worker = el.querySelector('[data-role="worker"]');
    if (worker && job.worker && el.tagName === "TR") worker.textContent = job.worker;
    if (job.terminal) {  // the server says which statuses are final (Status.terminal)
      el.removeAttribute("data-live");
      const box = el.querySelector('input[name="job_id"]');
      if (box) { box.checked = false; box.disabled = true; }
      if (el.hasAttribute("data-reload-when-done")) window.location.reload();
    } else if (job.status !== "queued") {
      const box = el.querySelector('input[name="job_id"]');
      if (box) { box.checked = false; box.disabled = true; }
    }
  }

  async function poll() {
    const rows = Array.from(document.querySelectorAll("[data-live][data-job]"));
    if (rows.length) {
      const query = rows.map(r => "id=" + encodeURIComponent(r.dataset.job)).join("&");
      try {
        const response = await fetch(liveUrl() + "?" + query, {headers: {"Accept": "application/json"}, credentials: "same-origin"});
        if (response.ok) {
          const data = await response.json();
          for (const job of data.jobs) {
            document.querySelectorAll('[data-job="' + job.id + '"]').forEach(el => update(el, job));
          }
        }
      } catch (err) { /* the next poll tries again */ }
    }
    setTimeout(poll, 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const all = document.querySelector("[data-select-all]");
    if (all) all.addEventListener("change", () => {
      document.querySelectorAll('input[name="job_id"]:not(:disabled)').forEach(b => { b.checked = all.checked; });
    });
    document.querySelectorAll("[data-confirm]").forEach(btn => btn.addEventListener("click", ev => {
      if (!window.confirm(btn.dataset.confirm)) ev.preventDefault();
    }));
    document.querySelectorAll("[data-copy]").forEach(btn => btn.addEventListener("click", async () => {
      const text = document.querySelector(btn.dataset.copy).textContent;
      try { await navigator.clipboard.writeText(text); btn.textContent = "Copied"; }
      catch (err) { window.prompt("Copy:", text); }
    }));
    poll();
  });
})();
