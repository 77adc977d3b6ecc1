// Handrail inbox: deadlines count down; the list reloads itself when requests change
// (server-sent events from /inbox/events); other pages say that something changed.
"use strict";

function countdown() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-deadline]")) {
    let left = Math.round((Date.parse(el.dataset.deadline) - now) / 1000);
    if (left <= 0) { el.textContent = "expired"; el.classList.add("expired"); continue; }
    const d = Math.floor(left / 86400); left %= 86400;
    const h = Math.floor(left / 3600); left %= 3600;
    const m = Math.floor(left / 60), s = left % 60;
    el.textContent = "in " + (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + s + "s";
  }
}

async function reloadRows(box) {
  const url = new URL(window.location.href);
  url.searchParams.set("fragment", "1");
  const response = await fetch(url, { credentials: "same-origin" });
  if (response.ok) { box.innerHTML = await response.text(); countdown(); }
}

function listen() {
  const source = document.body.dataset.events;
  if (!source || !window.EventSource) return;
  const events = new EventSource(source);
  events.addEventListener("change", () => {
    const box = document.querySelector("[data-live=reload]");
    if (box) { reloadRows(box); } else { document.getElementById("live").hidden = false; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  countdown();
  setInterval(countdown, 1000);
  listen();
});
