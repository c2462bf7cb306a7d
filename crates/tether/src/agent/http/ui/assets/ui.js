// tether's web UI: keeps pages live from the agent's event stream, opens objects, and
// sends actions (each confirmed, each with the session's CSRF token).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

function toast(text, bad) {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.className = bad ? "show bad" : "show";
  clearTimeout(box.timer);
  box.timer = setTimeout(() => (box.className = ""), 4000);
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : "{}",
    credentials: "same-origin",
  });
  let answer = {};
  try { answer = await response.json(); } catch (_) { answer = { error: await response.text() }; }
  return { ok: response.ok, message: answer.message || answer.error || response.statusText };
}

document.getElementById("logout")?.addEventListener("click", async () => {
  await fetch("/ui/logout", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
  location.href = "/ui/login";
});

// The Applications list: rows change in place.
const table = document.querySelector("#apps tbody");

// One Application: its live part is fetched again when it changes; an open object too.
const app = document.getElementById("app");
let selected = null;
let refreshing = null;

async function refreshApp() {
  if (refreshing) { refreshing.again = true; return; }
  refreshing = { again: false };
  try {
    const base = "/ui/apps/" + app.dataset.app;
    const response = await fetch(base + "/tree", { credentials: "same-origin" });
    if (response.ok) {
      document.getElementById("live").innerHTML = await response.text();
      if (selected) await openObject(selected, false);
    }
  } finally {
    const again = refreshing.again;
    refreshing = null;
    if (again) refreshApp();
  }
}

async function openObject(key, scroll) {
  selected = key;
  const query = new URLSearchParams(key).toString();
  const response = await fetch("/ui/apps/" + app.dataset.app + "/object?" + query, { credentials: "same-origin" });
  const panel = document.getElementById("object");
  if (!response.ok) { panel.hidden = true; app.classList.remove("with-object"); selected = null; return; }
  panel.innerHTML = await response.text();
  panel.hidden = false;
  app.classList.add("with-object");
  document.querySelectorAll("button.object").forEach((b) => {
    const same = b.dataset.kind === key.kind && b.dataset.name === key.name &&
      b.dataset.namespace === key.namespace && b.dataset.group === key.group;
    b.classList.toggle("selected", same);
  });
  if (scroll) panel.scrollTop = 0;
}

document.addEventListener("click", async (event) => {
  const object = event.target.closest("button.object");
  if (object && app) {
    const { group, kind, namespace, name } = object.dataset;
    openObject({ group, kind, namespace, name }, true);
    return;
  }
  if (event.target.closest("#close-object")) {
    selected = null;
    document.getElementById("object").hidden = true;
    app.classList.remove("with-object");
    document.querySelectorAll("button.object.selected").forEach((b) => b.classList.remove("selected"));
    return;
  }
  const action = event.target.closest("button[data-action]");
  if (action && app) {
    if (!confirm(action.dataset.confirm)) return;
    action.disabled = true;
    const body = action.dataset.revision ? { revision: action.dataset.revision } : null;
    const result = await post("/ui/apps/" + app.dataset.app + "/" + action.dataset.action, body);
    toast(result.message, !result.ok);
    action.disabled = false;
  }
});

// Live: the agent's own watches feed this stream.
if (table || app) {
  const events = new EventSource("/ui/events", { withCredentials: true });
  events.addEventListener("app", (event) => {
    const change = JSON.parse(event.data);
    if (app && change.app === app.dataset.app) refreshApp();
    if (table) {
      const counts = document.getElementById("counts");
      if (counts && change.counts) counts.outerHTML = change.counts;
      const row = table.querySelector('tr[data-app="' + CSS.escape(change.app) + '"]');
      if (row && change.deleted) row.remove();
      else if (row) {
        row.outerHTML = change.row;
        table.querySelector('tr[data-app="' + CSS.escape(change.app) + '"]')?.classList.add("flash");
      }
    }
  });
  events.addEventListener("resync", () => location.reload());
}
