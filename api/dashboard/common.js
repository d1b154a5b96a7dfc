// Helpers shared by the dashboard (app.js) and the report page (report.js): loaded first by both pages.
"use strict";
const RANK = { viewer: 1, reviewer: 2, ops: 3, admin: 4 };

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);
const when = (s) => (s ? new Date(s).toLocaleString() : "–");
const label = (s) => (s ? String(s).replaceAll("_", " ") : "–");
const role = () => sessionStorage.getItem("hep2role") || "";
const can = (r) => (RANK[role()] || 0) >= RANK[r];
function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text; t.hidden = false;
  clearTimeout(toast.t); toast.t = setTimeout(() => (t.hidden = true), 4000);
}
