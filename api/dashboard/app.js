// hep2 dashboard: plain JS, no build step. The API key lives in sessionStorage for this tab only.
"use strict";
const PATTERNS = ["homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi"];
const SPECIMEN_PATTERNS = [...PATTERNS, "negative", "other"];
const INTENSITIES = ["negative", "intermediate", "positive"];
const STATUSES = ["received", "queued", "running", "done", "needs_review", "rejected", "failed"];
const RANK = { viewer: 1, reviewer: 2, ops: 3, admin: 4 };
const main = document.getElementById("main");
let timer = null;

// ---------------------------------------------------------------- helpers
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
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children.flat(Infinity)) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);
const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const when = (s) => (s ? new Date(s).toLocaleString() : "–");
const role = () => sessionStorage.getItem("hep2role") || "";
const can = (r) => (RANK[role()] || 0) >= RANK[r];
const badge = (text, cls) => h("span", { class: `badge ${cls || text}` }, text.replace("_", " "));
function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text; t.hidden = false;
  clearTimeout(toast.t); toast.t = setTimeout(() => (t.hidden = true), 3500);
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem("hep2key") || ""}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  if (response.status === 401) { logout(); throw new Error("please log in"); }
  const data = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = typeof data === "object" ? data.detail : data;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}
const guarded = (fn) => async (...args) => { try { await fn(...args); } catch (e) { toast(e.message); } };

// ---------------------------------------------------------------- login
function logout() { sessionStorage.clear(); location.hash = "#/login"; }
function loginPage() {
  const input = h("input", { type: "password", id: "apikey", placeholder: "hep2_…", autocomplete: "off" });
  const error = h("p", { class: "error" });
  const submit = async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("hep2key", input.value.trim());
    const r = await fetch("/v1/me", { headers: { Authorization: `Bearer ${input.value.trim()}` } });
    if (!r.ok) { sessionStorage.clear(); error.textContent = r.status === 403 ? "this key may not use the dashboard" : "unknown or revoked key"; return; }
    const me = await r.json();
    sessionStorage.setItem("hep2role", me.role); sessionStorage.setItem("hep2name", me.name);
    location.hash = "#/worklist";
  };
  return h("form", { class: "card login", onsubmit: submit }, h("h1", {}, "Log in"),
    h("label", { for: "apikey" }, "API key"), input, error, h("button", { type: "submit", id: "login" }, "Log in"),
    h("p", { class: "muted" }, "Keys come from an admin: hep2 apikey create --role reviewer --name you"));
}

// ---------------------------------------------------------------- worklist
async function worklistPage() {
  const state = JSON.parse(sessionStorage.getItem("hep2filters") || "{}");
  const sel = (name, values, label) => h("label", {}, label, h("select", { name },
    h("option", { value: "" }, "any"), values.map((v) => h("option", { value: v, selected: state[name] === v }, v.replace("_", " ")))));
  const form = h("form", { class: "filters" },
    sel("status", STATUSES, "status"), sel("pattern", SPECIMEN_PATTERNS, "pattern"), sel("intensity", INTENSITIES, "intensity"),
    sel("needs_review", ["true", "false"], "needs review"),
    h("label", {}, "patient", h("input", { name: "patient", value: state.patient || "", size: 12 })),
    h("label", {}, "received from", h("input", { name: "received_from", type: "date", value: state.received_from || "" })),
    h("label", {}, "to", h("input", { name: "received_to", type: "date", value: state.received_to || "" })),
    h("button", { type: "submit" }, "Filter"));
  const body = h("tbody");
  const more = h("button", { class: "secondary", type: "button", hidden: true }, "Load more");
  const chips = h("div", { class: "chips" });
  let cursor = null;
  const load = guarded(async (reset) => {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) {
      // a date "to" includes that whole day
      if (v) params.set(k, k === "received_to" ? new Date(Date.parse(v) + 86400000).toISOString().slice(0, 10) : v);
    }
    if (!reset && cursor) params.set("cursor", cursor);
    const page = await api(`/v1/specimens?${params}`);
    if (reset) body.replaceChildren();
    for (const s of page.items) {
      body.append(h("tr", { class: "click", "data-id": s.id, onclick: () => (location.hash = `#/specimen/${s.id}`) },
        h("td", {}, s.id), h("td", {}, s.accession || "–"), h("td", {}, s.patient || "–"), h("td", {}, when(s.received_at)),
        h("td", {}, badge(s.status), " ", s.reviewed ? badge("reviewed") : ""),
        h("td", { class: "pattern" }, s.pattern || "–", s.second_pattern ? h("span", { class: "muted" }, ` / ${s.second_pattern}`) : ""),
        h("td", {}, s.intensity || "–"), h("td", {}, pct(s.confidence))));
    }
    cursor = page.next_cursor; more.hidden = !cursor;
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const [k, v] of new FormData(form)) state[k] = v;
    sessionStorage.setItem("hep2filters", JSON.stringify(state));
    load(true);
  });
  more.addEventListener("click", () => load(false));
  guarded(async () => {
    const o = await api("/v1/specimens/overview?days=30");
    chips.replaceChildren(h("span", { class: "chip" }, `total ${o.total}`),
      ...o.per_pattern.map((p) => h("span", { class: "chip" }, `${p.pattern.replace("_", " ")}: ${p.count}`)));
  })();
  load(true);
  return h("div", {}, h("h1", {}, "Worklist"), h("div", { class: "card" }, h("div", { class: "muted" }, "Final patterns"), chips), form,
    h("table", { id: "worklist" }, h("thead", {}, h("tr", {}, ["id", "accession", "patient", "received", "status", "pattern", "intensity", "confidence"].map((c) => h("th", {}, c)))), body),
    h("p", {}, more));
}

// ---------------------------------------------------------------- specimen
async function specimenPage(id) {
  const [d, cells] = await Promise.all([api(`/v1/specimens/${id}`), api(`/v1/specimens/${id}/cells`)]);
  const r = d.result;
  const img = h("img", { alt: "overlay", src: d.overlay_url || "" });
  const boxes = svg("svg", { preserveAspectRatio: "none" });
  const gallery = h("div", { id: "gallery" });
  const drawGallery = () => {
    boxes.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    boxes.replaceChildren(...cells.map((c) => svg("rect", { x: c.bbox_x, y: c.bbox_y, width: c.bbox_w, height: c.bbox_h,
      fill: "none", stroke: c.reviewed ? "#4da3ff" : "#ffd54a", "stroke-width": Math.max(1, img.naturalWidth / 400) })));
    const groups = {};
    for (const c of cells) (groups[c.final_pattern] ||= []).push(c);
    gallery.replaceChildren(...Object.entries(groups).sort((a, b) => b[1].length - a[1].length).map(([pattern, list]) =>
      h("div", { class: "gallery-group" }, h("h3", {}, `${pattern.replace("_", " ")} (${list.length})`),
        h("div", { class: "thumbs" }, list.map((c) => cellThumb(c, img))))));
  };
  const cellThumb = (c, source) => {
    const canvas = h("canvas", { width: 96, height: 96 });
    const pad = Math.round(Math.max(c.bbox_w, c.bbox_h) * 0.15);
    canvas.getContext("2d").drawImage(source, c.bbox_x - pad, c.bbox_y - pad, c.bbox_w + 2 * pad, c.bbox_h + 2 * pad, 0, 0, 96, 96);
    const select = can("reviewer") ? h("select", { "data-cell": c.id, onchange: guarded(async (ev) => {
      const out = await api(`/v1/cells/${c.id}/review`, { method: "POST", body: { pattern: ev.target.value } });
      Object.assign(c, out); drawGallery(); toast(`cell ${c.index}: ${out.final_pattern}`);
    }) }, PATTERNS.map((p) => h("option", { value: p, selected: p === c.final_pattern }, p.replace("_", " ")))) : null;
    return h("div", { class: "thumb", title: Object.entries(c.probabilities).map(([k, v]) => `${k} ${pct(v)}`).join("\n") },
      canvas, h("div", {}, `#${c.index} ${pct(c.confidence)}${c.mitotic ? " mitotic" : ""}${c.reviewed ? " ✓" : ""}`), select);
  };
  img.addEventListener("load", drawGallery);

  const reviewBox = h("div", { class: "card", id: "review" }, h("h2", {}, "Review"));
  if (r && can("reviewer")) {
    const pattern = h("select", { id: "correct-pattern" }, SPECIMEN_PATTERNS.map((p) => h("option", { value: p, selected: p === d.final.pattern }, p.replace("_", " "))));
    const intensity = h("select", { id: "correct-intensity" }, INTENSITIES.map((p) => h("option", { value: p, selected: p === d.final.intensity }, p)));
    const comment = h("input", { id: "comment", placeholder: "comment (optional)", size: 30 });
    const send = (body) => guarded(async () => {
      if (comment.value) body.comment = comment.value;
      await api(`/v1/specimens/${id}/review`, { method: "POST", body }); toast("review saved"); render();
    });
    reviewBox.append(h("p", {}, h("button", { id: "confirm", type: "button", onclick: send({ action: "confirm" }) }, "Confirm")),
      h("p", {}, "Correct to ", pattern, " ", intensity, " ", comment, " ",
        h("button", { id: "save-correction", type: "button", onclick: () => send({ action: "correct", pattern: pattern.value, intensity: intensity.value })() }, "Save correction")));
  } else if (!r) reviewBox.append(h("p", { class: "muted" }, "No result yet."));
  else reviewBox.append(h("p", { class: "muted" }, "Your role can view but not review."));
  if (d.reviews.length) reviewBox.append(h("table", {}, h("tr", {}, ["when", "who", "field", "from", "to", "comment"].map((c) => h("th", {}, c))),
    d.reviews.map((v) => h("tr", {}, h("td", {}, when(v.created_at)), h("td", {}, v.reviewer), h("td", {}, v.field), h("td", {}, v.old_value || "–"), h("td", {}, v.new_value), h("td", {}, v.comment || "")))));

  const summary = h("div", { class: "card", id: "summary" },
    h("div", { class: "muted" }, "Final pattern"), h("div", { class: "big", id: "final-pattern" }, (d.final.pattern || "–").replace("_", " ")),
    h("dl", {},
      h("dt", {}, "final intensity"), h("dd", { id: "final-intensity" }, d.final.intensity || "–"),
      h("dt", {}, "model pattern"), h("dd", {}, r ? `${r.pattern} (${pct(r.confidence)})` : "–"),
      h("dt", {}, "second pattern"), h("dd", {}, r && r.second_pattern ? `${r.second_pattern} (${pct(r.second_confidence)})` : "–"),
      h("dt", {}, "ICAP"), h("dd", {}, r?.icap_code || "–"),
      h("dt", {}, "model intensity"), h("dd", {}, r ? `${r.intensity_class}, index ${fmt(r.intensity_index)}` : "–"),
      h("dt", {}, "cells"), h("dd", {}, r ? r.cell_count : "–"),
      h("dt", {}, "status"), h("dd", {}, badge(d.item.status), " ", r?.review_reason || d.item.status_reason || ""),
      h("dt", {}, "accession / patient"), h("dd", {}, d.item.accession ? h("a", { id: "report-link", href: `report.html#${encodeURIComponent(d.item.accession)}` }, `${d.item.accession} (report)`) : "–", ` / ${d.item.patient || "–"}`),
      h("dt", {}, "well / dilution"), h("dd", {}, `${d.item.well || "–"} / ${d.item.dilution || "–"}`),
      h("dt", {}, "models"), h("dd", {}, d.model_versions.map((m) => `${m.task}: ${m.version} (${m.stage})`).join(", ") || "–")));
  return h("div", {}, h("h1", {}, `Specimen ${d.item.accession || ""} · slide ${id}`),
    h("div", { class: "grid" }, h("div", {}, h("div", { class: "overlay card" }, img, boxes), h("h2", {}, "Cells by class"), gallery),
      h("div", {}, summary, reviewBox)));
}

// ---------------------------------------------------------------- models
function foldChart(folds) {
  const w = 360, hgt = 160, bw = Math.min(50, (w - 40) / Math.max(folds.length, 1) - 8);
  return svg("svg", { width: w, height: hgt + 30, id: "fold-chart", role: "img" },
    svg("line", { x1: 30, y1: hgt, x2: w, y2: hgt, stroke: "#999" }),
    [0, 0.5, 1].map((v) => svg("text", { x: 0, y: hgt - v * (hgt - 10) + 4, "font-size": 10 }, v.toFixed(1))),
    folds.map((f, i) => {
      const x = 40 + i * (bw + 8), y = hgt - f.mean_class_accuracy * (hgt - 10);
      return [svg("rect", { x, y, width: bw, height: hgt - y, fill: "#1f6feb" }, svg("title", {}, `fold ${f.fold}: MCA ${fmt(f.mean_class_accuracy, 3)}`)),
        svg("text", { x: x + bw / 2, y: hgt + 14, "font-size": 10, "text-anchor": "middle" }, `fold ${f.fold}`),
        svg("text", { x: x + bw / 2, y: y - 3, "font-size": 10, "text-anchor": "middle" }, fmt(f.mean_class_accuracy, 2))];
    }));
}
function confusionTable(cm) {
  const max = Math.max(1, ...cm.matrix.flat());
  return h("table", { class: "cm", id: "confusion" }, h("tr", {}, h("th", {}, "true \\ predicted"), cm.labels.map((l) => h("th", {}, l.slice(0, 5)))),
    cm.matrix.map((row, i) => h("tr", {}, h("th", {}, cm.labels[i]), row.map((v) =>
      h("td", { style: `background: rgba(31,111,235,${(v / max).toFixed(2)}); color: ${v / max > 0.5 ? "#fff" : "#000"}` }, v)))));
}
async function modelsPage() {
  const versions = await api("/v1/models");
  const detail = h("div", { id: "model-detail" });
  const show = guarded(async (id) => {
    const m = await api(`/v1/models/${id}`);
    detail.replaceChildren(h("div", { class: "card" }, h("h2", {}, `${m.version.task} ${m.version.version}`),
      h("pre", {}, JSON.stringify(m.version.metrics, null, 1).slice(0, 1500)),
      m.run ? [h("h2", {}, "Grouped-CV test folds (mean class accuracy)"), foldChart(m.run.fold_metrics),
        m.run.confusion ? [h("h2", {}, "Confusion matrix (pooled test folds)"), confusionTable(m.run.confusion)] : ""]
        : h("p", { class: "muted" }, "No training run recorded for this version.")));
  });
  const act = (label, fn) => h("button", { class: "secondary", type: "button", onclick: guarded(async (ev) => { ev.stopPropagation(); await fn(); render(); }) }, label);
  const tasks = [...new Set(versions.map((v) => v.task))];
  return h("div", {}, h("h1", {}, "Models"),
    h("table", {}, h("tr", {}, ["id", "task", "version", "stage", "MCA", "created", "promoted", ""].map((c) => h("th", {}, c))),
      versions.map((v) => h("tr", { class: "click", onclick: () => show(v.id) }, h("td", {}, v.id), h("td", {}, v.task), h("td", {}, v.version),
        h("td", {}, badge(v.stage)), h("td", {}, fmt(v.metrics?.mca?.mean ?? v.metrics?.mca, 3)), h("td", {}, when(v.created_at)), h("td", {}, when(v.promoted_at)),
        h("td", {}, can("ops") && v.stage !== "production" ? act("Promote", async () => {
          const force = confirm("Force promotion even if the policy prefers the champion? (Cancel = let the policy decide)");
          const out = await api(`/v1/models/${v.id}/promote`, { method: "POST", body: { force } }); toast(out.message);
        }) : "")))),
    can("ops") ? h("p", {}, tasks.map((t) => act(`Roll back ${t}`, async () => {
      const out = await api("/v1/models/rollback", { method: "POST", body: { task: t } }); toast(`${t}: production is now ${out.version}`);
    }))) : "", detail);
}

// ---------------------------------------------------------------- training
async function trainingPage() {
  const body = h("tbody");
  const refresh = guarded(async () => {
    const runs = await api("/v1/training-runs");
    body.replaceChildren(...runs.map((r) => h("tr", {}, h("td", {}, r.id), h("td", {}, r.task), h("td", {}, badge(r.status)),
      h("td", {}, h("div", { class: "progress" }, h("div", { style: `width:${Math.min(100, r.progress_pct)}%` })), `${fmt(r.progress_pct, 0)}%`,
        r.current_fold !== null ? h("span", { class: "muted" }, ` fold ${r.current_fold}/${r.folds ?? "?"} epoch ${r.current_epoch ?? "–"}`) : ""),
      h("td", {}, r.requested_by || r.trigger), h("td", {}, when(r.created_at)), h("td", {}, r.error || ""),
      h("td", {}, can("ops") && ["queued", "running"].includes(r.status) && !r.cancel_requested
        ? h("button", { class: "secondary", type: "button", onclick: guarded(async () => { await api(`/v1/training-runs/${r.id}/cancel`, { method: "POST" }); refresh(); }) }, "Cancel")
        : r.cancel_requested ? "cancelling" : ""))));
  });
  const task = h("select", {}, ["cell_pattern", "segmentation", "intensity", "specimen_pattern"].map((t) => h("option", { value: t }, t)));
  const start = can("ops") ? h("p", {}, "Start training for ", task, " ", h("button", { type: "button", onclick: guarded(async () => {
    const run = await api("/v1/training-runs", { method: "POST", body: { task: task.value } }); toast(`run ${run.id} queued`); refresh();
  }) }, "Start")) : "";
  refresh();
  timer = setInterval(refresh, 3000);  // live progress
  return h("div", {}, h("h1", {}, "Training runs"), start,
    h("table", {}, h("thead", {}, h("tr", {}, ["id", "task", "status", "progress", "by", "created", "error", ""].map((c) => h("th", {}, c)))), body));
}

// ---------------------------------------------------------------- failures
async function failuresPage() {
  const [jobs, queues] = await Promise.all([api("/v1/jobs?status=failed&status=rejected"), api("/v1/queues")]);
  return h("div", {}, h("h1", {}, "Failures"),
    h("div", { class: "card chips", id: "queues" }, Object.entries(queues).map(([q, n]) => h("span", { class: "chip" }, `queue ${q}: ${n ?? "?"}`))),
    h("table", { id: "failures" }, h("tr", {}, ["slide", "key", "status", "reason", "attempts", "worker", "updated", ""].map((c) => h("th", {}, c))),
      jobs.map((j) => h("tr", {}, h("td", {}, j.slide_id), h("td", {}, j.key), h("td", {}, badge(j.status)), h("td", {}, j.reason || j.last_error || ""),
        h("td", {}, j.attempts), h("td", {}, j.worker || "–"), h("td", {}, when(j.updated_at)),
        h("td", {}, can("ops") && j.status === "failed" ? h("button", { type: "button", onclick: guarded(async () => {
          await api(`/v1/jobs/${j.slide_id}/rerun`, { method: "POST" }); toast(`slide ${j.slide_id} queued`); render();
        }) }, "Re-run") : "")))),
    jobs.length ? "" : h("p", { class: "muted" }, "Nothing failed or rejected."));
}

// ---------------------------------------------------------------- router
async function render() {
  clearInterval(timer);
  const [, page, arg] = location.hash.split("/");
  const loggedIn = !!sessionStorage.getItem("hep2key");
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("who").textContent = loggedIn ? `${sessionStorage.getItem("hep2name")} (${role()})` : "";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${page}`);
  if (!loggedIn) { main.replaceChildren(loginPage()); return; }
  const pages = { worklist: worklistPage, specimen: specimenPage, models: modelsPage, training: trainingPage, failures: failuresPage };
  try {
    main.replaceChildren(await (pages[page] || worklistPage)(arg));
  } catch (e) {
    main.replaceChildren(h("p", { class: "error" }, e.message));
  }
}
document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", render);
render();
