// Baton dashboard: the one script (no build step). Every page works without it; it adds
// - live updates: the page's <div id="live"> is fetched again every data-poll ms (header
//   x-baton-fragment: live; the server answers with just that part) while the tab is visible,
//   until the answer says x-baton-done: 1 (a run that ended);
// - confirmations for forms with data-confirm, and filters that apply on change.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (live) {
    const every = Math.max(250, Number(live.dataset.poll) || 1000);
    let last = null;
    let failures = 0;
    const tick = async function () {
      if (live.dataset.done === "true") return;
      if (document.visibilityState === "visible") {
        try {
          const res = await fetch(location.href, {
            headers: { "x-baton-fragment": "live" },
            credentials: "same-origin",
            cache: "no-store",
          });
          if (res.status === 401) {
            location.reload(); // the session ended: show the sign-in form
            return;
          }
          if (res.ok) {
            failures = 0;
            const html = await res.text();
            if (html !== last) {
              last = html;
              // Keep what the reader opened (step outputs) open across updates.
              const open = Array.from(live.querySelectorAll("details[open][id]"), (d) => d.id);
              live.innerHTML = html;
              for (const id of open) {
                const d = document.getElementById(id);
                if (d) d.open = true;
              }
              live.dataset.updated = String(Date.now());
            }
            if (res.headers.get("x-baton-done") === "1") {
              live.dataset.done = "true";
              return;
            }
          } else {
            failures++;
          }
        } catch (e) {
          failures++; // the server is restarting; try again, more slowly
        }
      }
      setTimeout(tick, every * Math.min(1 + failures, 10));
    };
    setTimeout(tick, every);
  }

  document.addEventListener("submit", function (e) {
    const form = e.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
    }
  });

  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", function () {
        form.requestSubmit();
      });
    }
  }

  // The send form: say at once when the data is not a JSON object.
  const data = document.querySelector("#send-event textarea[name=data]");
  if (data) {
    data.addEventListener("input", function () {
      let message = "";
      if (data.value.trim() !== "") {
        try {
          const v = JSON.parse(data.value);
          if (v === null || typeof v !== "object" || Array.isArray(v)) message = "Data must be a JSON object.";
        } catch (err) {
          message = "Not valid JSON: " + err.message;
        }
      }
      data.setCustomValidity(message);
    });
  }
})();
