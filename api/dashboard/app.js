// hep2 dashboard: plain JS, no build step. The API key lives in sessionStorage for this tab only.
"use strict";
const PATTERNS = ["homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi"];
const SPECIMEN_PATTERNS = [...PATTERNS, "negative", "other"];
const INTENSITIES = ["negative", "intermediate", "positive"];
const STATUSES = ["received", "queued", "running", "done", "needs_review", "rejected", "failed"];
const main = document.getElementById("main");
let timer = null;

// ---------------------------------------------------------------- helpers (the shared ones: common.js)
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children.flat(Infinity)) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const badge = (text, cls) => h("span", { class: `badge ${cls || text}` }, text.replace("_", " "));

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
    h("label", {}, "accession", h("input", { name: "accession", id: "filter-accession", value: state.accession || "", size: 14, placeholder: "or its beginning" })),
    sel("status", STATUSES, "status"), sel("pattern", SPECIMEN_PATTERNS, "pattern"), sel("intensity", INTENSITIES, "intensity"),
    sel("needs_review", ["true", "false"], "needs review"),
    h("label", {}, "patient", h("input", { name: "patient", value: state.patient || "", size: 12 })),
    h("label", {}, "received from", h("input", { name: "received_from", type: "date", value: state.received_from || "" })),
    h("label", {}, "to", h("input", { name: "received_to", type: "date", value: state.received_to || "" })),
    h("button", { type: "submit", id: "filter" }, "Filter"));
  const body = h("tbody");
  const more = h("button", { class: "secondary", type: "button", hidden: true }, "Load more");
  const chips = h("div", { class: "chips" });
  let cursor = null;
  const open = (id) => (location.hash = `#/specimen/${id}`);
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
      body.append(h("tr", { class: "click", tabindex: 0, "data-id": s.id, "aria-label": `open ${s.file_name} (${s.accession || "no accession"})`,
        onclick: () => open(s.id), onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); open(s.id); } } },
        h("td", { class: "file", title: s.key }, s.file_name),
        h("td", {}, s.accession || "–"), h("td", {}, s.well || "–"), h("td", {}, s.dilution || "–"),
        h("td", {}, when(s.received_at)),
        h("td", {}, badge(s.status), " ", s.reviewed ? badge("reviewed") : ""),
        h("td", { class: "pattern" }, (s.pattern || "–").replace("_", " "), s.second_pattern ? h("span", { class: "muted" }, ` / ${s.second_pattern}`) : ""),
        h("td", { class: "icap" }, s.icap || "–"),
        h("td", {}, s.intensity || "–"), h("td", {}, pct(s.confidence)),
        h("td", { class: "reason" }, s.needs_review && !s.reviewed ? (s.review_reason || "") : (s.status_reason || ""))));
    }
    if (reset && !page.items.length) body.append(h("tr", {}, h("td", { colspan: 11, class: "muted" }, "Nothing matches these filters.")));
    cursor = page.next_cursor; more.hidden = !cursor;
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const [k, v] of new FormData(form)) state[k] = v.trim();
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
    h("p", { class: "muted" }, "Rows open with a click, or with Tab and Enter."),
    h("table", { id: "worklist" }, h("thead", {}, h("tr", {}, ["file", "accession", "well", "dilution", "received", "status", "pattern", "ICAP", "intensity", "confidence", "review reason"].map((c) => h("th", {}, c)))), body),
    h("p", {}, more));
}

// ---------------------------------------------------------------- specimen
let VOCAB = null;
const vocabulary = async () => (VOCAB ||= await api("/v1/vocabulary"));
const ZOOMS = [1, 1.5, 2, 3, 4];

function icapSelect(id, vocab, selected, none) {
  const groups = { negative: [], nuclear: [], cytoplasmic: [], mitotic: [] };
  for (const [code, name] of Object.entries(vocab.icap)) (groups[name.split(" ")[0]] || groups.nuclear).push([code, name]);
  return h("select", { id }, none ? h("option", { value: "" }, none) : "",
    Object.entries(groups).map(([group, list]) => h("optgroup", { label: group }, list.map(([code, name]) =>
      h("option", { value: code, selected: code === selected }, `${code} ${name.replace(/^(nuclear|cytoplasmic|mitotic) /, "")} → ${label(vocab.pattern_of_icap[code])}`)))));
}

async function specimenPage(id) {
  const [d, cells, vocab] = await Promise.all([api(`/v1/specimens/${id}`), api(`/v1/specimens/${id}/cells`), vocabulary()]);
  const r = d.result;
  // the field: the overlay (fixed scale) or a contrast-stretched copy of the raw image, cell boxes on top
  const img = h("img", { alt: "overlay of the field on a fixed scale", id: "field-image", src: d.overlay_url || "" });
  const raw = new Image();  // the uploaded image, fetched through the API (same origin: its pixels can be read)
  const boxes = svg("svg", { preserveAspectRatio: "none", id: "cell-boxes" });
  const field = h("div", { class: "field", id: "field" }, img, boxes);
  const viewer = h("div", { class: "viewer", id: "viewer" }, field);
  const caption = h("div", { class: "caption", id: "view-caption" });
  let zoom = 0, stretched = null, view = "fixed";
  const setZoom = (z) => { zoom = Math.max(0, Math.min(ZOOMS.length - 1, z)); field.style.width = `${ZOOMS[zoom] * 100}%`; zoomLabel.textContent = `${ZOOMS[zoom]}×`; };
  const zoomLabel = h("span", { class: "muted", id: "zoom-level" }, "1×");
  const setView = (v) => {
    view = v;
    if (v === "stretched" && !stretched) { toast("the stretched view needs the raw image (PNG/JPEG) loaded"); v = view = "fixed"; }
    if (v === "stretched") img.src = stretched;
    else img.src = d.overlay_url || "";
    caption.replaceChildren(v === "fixed"
      ? h("span", {}, h("b", {}, "As acquired: fixed scale"), " (0 = black, full scale of the camera = white; not stretched), coloured outlines = cells by class",
        d.overlay_problem ? h("div", { class: "warn", id: "overlay-problem" }, `No overlay: ${d.overlay_problem}`) : "")
      : h("span", { class: "warn" }, h("b", {}, "Contrast-stretched copy"), " of the raw image (its own 0.5–99.5th percentiles): for reading the pattern only; brightness NOT comparable between images"));
    for (const b of tools.querySelectorAll("[data-view]")) b.classList.toggle("active", b.dataset.view === v);
  };
  const tools = h("div", { class: "tools" },
    h("button", { class: "secondary", type: "button", "data-view": "fixed", onclick: () => setView("fixed") }, "Fixed scale"),
    h("button", { class: "secondary", type: "button", "data-view": "stretched", id: "view-stretched", onclick: () => setView("stretched") }, "Stretched"),
    " zoom ", h("button", { class: "secondary", type: "button", id: "zoom-out", "aria-label": "zoom out", onclick: () => setZoom(zoom - 1) }, "−"),
    zoomLabel, h("button", { class: "secondary", type: "button", id: "zoom-in", "aria-label": "zoom in", onclick: () => setZoom(zoom + 1) }, "+"),
    h("button", { class: "secondary", type: "button", onclick: () => setZoom(0) }, "fit"),
    h("label", {}, h("input", { type: "checkbox", id: "show-boxes", checked: true, onchange: (ev) => { boxes.style.display = ev.target.checked ? "" : "none"; } }), " cell boxes"));
  const index = h("div", { class: "index", id: "fluorescence-index" }, r
    ? [h("span", { class: "muted" }, "fluorescence index "), h("b", {}, fmt(r.intensity_index, 1)), ` (${r.intensity_class})`,
      r.quality ? h("span", { class: "muted" }, ` · nuclei seen ${r.quality.nuclei ?? "–"} · noise ${fmt(r.quality.noise, 1)} · focus ${fmt(r.quality.focus, 2)}`) : ""]
    : "");

  const gallery = h("div", { id: "gallery" });
  const drawBoxes = () => {
    const w = r?.quality?.width || raw.naturalWidth || img.naturalWidth, hgt = r?.quality?.height || raw.naturalHeight || img.naturalHeight;
    boxes.setAttribute("viewBox", `0 0 ${w} ${hgt}`);  // cell boxes are in the raw image's pixels
    boxes.replaceChildren(...cells.map((c) => svg("rect", { x: c.bbox_x, y: c.bbox_y, width: c.bbox_w, height: c.bbox_h, "data-cell": c.id,
      fill: "none", stroke: c.reviewed ? "#4da3ff" : "#ffd54a", "stroke-width": Math.max(1, w / 500), "vector-effect": "non-scaling-stroke" },
    svg("title", {}, `cell #${c.index}: ${label(c.final_pattern)}${c.reviewed ? " (reviewed)" : ""}`))));
  };
  const drawGallery = () => {
    drawBoxes();
    const groups = {};
    for (const c of cells) (groups[c.final_pattern] ||= []).push(c);
    gallery.replaceChildren(...Object.entries(groups).sort((a, b) => b[1].length - a[1].length).map(([pattern, list]) =>
      h("div", { class: "gallery-group" }, h("h3", {}, `${label(pattern)} (${list.length})`),
        h("div", { class: "thumbs" }, list.map((c) => cellThumb(c))))));
  };
  const cellThumb = (c) => {
    const canvas = h("canvas", { width: 96, height: 96 });
    const pad = Math.round(Math.max(c.bbox_w, c.bbox_h) * 0.15);
    const source = raw.naturalWidth ? raw : img;
    const k = source === raw ? 1 : img.naturalWidth / (r?.quality?.width || img.naturalWidth);
    canvas.getContext("2d").drawImage(source, (c.bbox_x - pad) * k, (c.bbox_y - pad) * k, (c.bbox_w + 2 * pad) * k, (c.bbox_h + 2 * pad) * k, 0, 0, 96, 96);
    const parts = [canvas, h("div", {}, `#${c.index} ${pct(c.confidence)}${c.mitotic ? " mitotic" : ""}`),
      h("div", { class: "cell-label", "data-cell-label": c.id }, c.reviewed ? h("b", {}, `${label(c.final_pattern)} ✓`) : h("span", { class: "muted" }, `model: ${label(c.predicted_pattern)}`))];
    if (can("reviewer")) {
      const select = h("select", { "data-cell": c.id, "aria-label": `label of cell ${c.index}` },
        vocab.cell_labels.map((p) => h("option", { value: p, selected: p === c.final_pattern }, label(p))));
      const save = h("button", { type: "button", class: "small", "data-save": c.id, disabled: true, onclick: guarded(async () => {
        const out = await api(`/v1/cells/${c.id}/review`, { method: "POST", body: { pattern: select.value } });
        Object.assign(c, out); drawGallery(); refreshHistory(); toast(`cell #${c.index}: ${label(out.final_pattern)} saved`);
      }) }, "Save");
      select.addEventListener("change", () => { save.disabled = select.value === c.final_pattern; });
      parts.push(select, save);
      if (c.reviewed && c.review_id) parts.push(h("button", { type: "button", class: "small secondary", "data-undo": c.id, onclick: guarded(async () => {
        await api(`/v1/reviews/${c.review_id}/undo`, { method: "POST" });
        Object.assign(c, (await api(`/v1/specimens/${id}/cells`)).find((x) => x.id === c.id)); drawGallery(); refreshHistory(); toast(`cell #${c.index}: correction undone`);
      }) }, "Undo"));
    }
    return h("div", { class: `thumb${c.reviewed ? " reviewed" : ""}`, "data-thumb": c.id, title: Object.entries(c.probabilities).map(([k, v]) => `${k} ${pct(v)}`).join("\n") }, parts);
  };
  img.addEventListener("load", () => { if (!gallery.childElementCount) drawGallery(); else drawBoxes(); }, { once: false });
  raw.addEventListener("load", () => {
    const canvas = document.createElement("canvas");
    canvas.width = raw.naturalWidth; canvas.height = raw.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(raw, 0, 0);
    try {
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const g = data.data, values = [];
      for (let i = 1; i < g.length; i += 4 * 7) values.push(g[i]);
      values.sort((a, b) => a - b);
      const lo = values[Math.floor(values.length * 0.005)], hi = Math.max(values[Math.floor(values.length * 0.995)], lo + 1);
      for (let i = 0; i < g.length; i += 4) { const v = Math.max(0, Math.min(255, ((g[i + 1] - lo) * 255) / (hi - lo))); g[i] = g[i + 1] = g[i + 2] = v; }
      ctx.putImageData(data, 0, 0);
      stretched = canvas.toDataURL("image/png");
    } catch (e) { stretched = null; }
    drawGallery();
  });
  guarded(async () => {
    const response = await fetch(`/v1/specimens/${id}/image`, { headers: { Authorization: `Bearer ${sessionStorage.getItem("hep2key") || ""}` } });
    if (response.ok) raw.src = URL.createObjectURL(await response.blob());
  })();

  const history = h("div", { id: "history" });
  const cellIndex = Object.fromEntries(cells.map((c) => [c.id, c.index]));
  const showHistory = (reviews) => history.replaceChildren(reviews.length ? h("table", { id: "review-history" },
    h("tr", {}, ["when", "who", "what", "from", "to", "comment"].map((c) => h("th", {}, c))),
    reviews.map((v) => h("tr", { class: v.undone_at ? "undone" : "", "data-review": v.id },
      h("td", {}, when(v.created_at)), h("td", {}, v.reviewer),
      h("td", {}, v.cell_id ? `cell #${cellIndex[v.cell_id] ?? v.cell_id}` : v.field),
      h("td", {}, label(v.old_value)), h("td", {}, label(v.new_value)),
      h("td", {}, v.comment || "", v.undone_at ? h("span", { class: "warn" }, ` undone by ${v.undone_by} ${when(v.undone_at)}`) : ""))))
    : h("p", { class: "muted" }, "No reviews yet."));
  const refreshHistory = guarded(async () => showHistory((await api(`/v1/specimens/${id}`)).reviews));
  showHistory(d.reviews);

  const reviewBox = h("div", { class: "card", id: "review" }, h("h2", {}, "Review"));
  if (r && can("reviewer")) {
    const icap = icapSelect("correct-icap", vocab, (d.final.icap || "").split(/[+,]/)[0] || r.icap_code?.split(",")[0]);
    const icap2 = icapSelect("correct-icap2", vocab, (d.final.icap || "").split("+")[1] || "", "— (one pattern)");
    const intensity = h("select", { id: "correct-intensity" }, vocab.intensities.map((p) => h("option", { value: p, selected: p === d.final.intensity }, p)));
    const comment = h("input", { id: "comment", placeholder: "comment (optional)", size: 30 });
    const send = (body) => guarded(async () => {
      if (comment.value) body.comment = comment.value;
      await api(`/v1/specimens/${id}/review`, { method: "POST", body }); toast("review saved"); render();
    });
    reviewBox.append(h("p", {}, h("button", { id: "confirm", type: "button", onclick: send({ action: "confirm" }) }, "Confirm"), " ",
      h("span", { class: "muted" }, `${label(d.final.pattern)} · ${d.final.icap || "no ICAP code"} · ${d.final.intensity || "–"}`)),
    h("div", { class: "correct" }, h("label", {}, "ICAP pattern", icap), h("label", {}, "mixed with", icap2),
      h("label", {}, "intensity", intensity), h("label", {}, "comment", comment),
      h("button", { id: "save-correction", type: "button", onclick: () => send({ action: "correct", icap: [icap.value, icap2.value].filter(Boolean), intensity: intensity.value })() }, "Save correction")));
  } else if (!r) reviewBox.append(h("p", { class: "muted" }, "No result yet."));
  else reviewBox.append(h("p", { class: "muted" }, "Your role can view but not review."));
  reviewBox.append(h("h3", {}, "Review history (specimen and cells)"), history);

  const summary = h("div", { class: "card", id: "summary" },
    h("div", { class: "muted" }, "Final pattern"), h("div", { class: "big", id: "final-pattern" }, label(d.final.pattern)),
    h("dl", {},
      h("dt", {}, "ICAP"), h("dd", { id: "final-icap" }, d.final.icap || "–"),
      h("dt", {}, "final intensity"), h("dd", { id: "final-intensity" }, d.final.intensity || "–"),
      h("dt", {}, "model pattern"), h("dd", {}, r ? `${label(r.pattern)} (${pct(r.confidence)}), ICAP ${r.icap_code || "–"}` : "–"),
      h("dt", {}, "second pattern"), h("dd", {}, r && r.second_pattern ? `${label(r.second_pattern)} (${pct(r.second_confidence)})` : "–"),
      h("dt", {}, "model intensity"), h("dd", {}, r ? `${r.intensity_class}, index ${fmt(r.intensity_index, 1)}` : "–"),
      h("dt", {}, "cells classified"), h("dd", {}, r ? r.cell_count : "–"),
      h("dt", {}, "nuclei seen"), h("dd", { id: "nuclei-seen" }, r?.quality?.nuclei ?? "–"),
      h("dt", {}, "status"), h("dd", {}, badge(d.item.status), " ", r?.review_reason || d.item.status_reason || ""),
      h("dt", {}, "file"), h("dd", {}, d.item.file_name),
      h("dt", {}, "accession / patient"), h("dd", {}, d.item.accession ? h("a", { id: "report-link", href: `report.html#${encodeURIComponent(d.item.accession)}` }, `${d.item.accession} (report)`) : "–", ` / ${d.item.patient || "–"}`),
      h("dt", {}, "well / dilution"), h("dd", {}, `${d.item.well || "–"} / ${d.item.dilution || "–"}`),
      h("dt", {}, "models"), h("dd", {}, d.model_versions.map((m) => `${m.task}: ${m.version} (${m.stage})`).join(", ") || "–")));
  setView("fixed");
  return h("div", {}, h("h1", {}, `Specimen ${d.item.accession || ""} · ${d.item.file_name}`),
    h("div", { class: "grid" }, h("div", {}, h("div", { class: "card" }, tools, caption, index, viewer), h("h2", {}, "Cells by class"), gallery),
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
function promoteDialog(v) {
  // a real dialog: Cancel (or Escape) promotes nothing
  return new Promise((resolve) => {
    const dialog = h("dialog", { id: "promote-dialog", "aria-labelledby": "promote-title" },
      h("h2", { id: "promote-title" }, `Promote ${v.task} ${v.version}?`),
      h("p", {}, "The promotion policy compares it with the production model and may keep the champion. ",
        "Force promotion only when you have checked the metrics yourself."),
      h("form", { method: "dialog" },
        h("button", { value: "policy", id: "promote-policy" }, "Promote (policy decides)"), " ",
        h("button", { value: "force", class: "secondary", id: "promote-force" }, "Force promotion"), " ",
        h("button", { value: "cancel", class: "secondary", id: "promote-cancel", autofocus: true }, "Cancel")));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue || "cancel"); });
    document.body.append(dialog);
    dialog.showModal();
  });
}
async function modelsPage() {
  const versions = await api("/v1/models");
  const detail = h("div", { id: "model-detail" });
  const show = guarded(async (id) => {
    const m = await api(`/v1/models/${id}`);
    const parts = [h("h2", {}, `${m.version.task} ${m.version.version} · ${m.version.stage}`),
      h("p", {}, "grouped-CV mean class accuracy ", h("b", { id: "model-mca" }, fmt(m.version.mca, 3)),
        m.card?.mca_std !== undefined && m.card?.mca_std !== null ? ` ± ${fmt(m.card.mca_std, 3)}` : "")];
    if (m.run) {
      parts.push(h("h2", {}, "Grouped-CV test folds of its training run (mean class accuracy)"), foldChart(m.run.fold_metrics),
        m.run.confusion ? [h("h2", {}, "Confusion matrix (pooled test folds)"), confusionTable(m.run.confusion)] : "");
    } else if (m.card) {
      parts.push(h("p", { class: "muted" }, `From its model card (${m.card.protocol || "grouped"} CV, ${m.card.n_cells ?? "?"} cells in ${m.card.n_groups ?? "?"} specimen groups, ${m.card.date || ""}); `,
        `pooled MCA ${fmt(m.card.pooled_mca, 3)}.`),
      h("h2", {}, "Grouped-CV test folds (mean class accuracy)"), foldChart(m.card.folds),
      m.card.confusion ? [h("h2", {}, "Confusion matrix (pooled out-of-fold predictions)"), confusionTable(m.card.confusion)] : "");
    } else parts.push(h("p", { class: "muted" }, "No training run or model-card metrics recorded for this version."));
    parts.push(h("details", {}, h("summary", {}, "raw metrics"), h("pre", {}, JSON.stringify(m.version.metrics, null, 1).slice(0, 3000))));
    detail.replaceChildren(h("div", { class: "card" }, parts));
  });
  const act = (label, fn) => h("button", { class: "secondary", type: "button", onclick: guarded(async (ev) => { ev.stopPropagation(); if (await fn() !== false) render(); }) }, label);
  const tasks = [...new Set(versions.map((v) => v.task))];
  const production = versions.find((v) => v.stage === "production" && v.task === "cell_pattern") || versions[0];
  if (production) show(production.id);
  return h("div", {}, h("h1", {}, "Models"),
    h("table", { id: "models" }, h("tr", {}, ["id", "task", "version", "stage", "MCA", "created", "promoted", ""].map((c) => h("th", {}, c))),
      versions.map((v) => h("tr", { class: "click", tabindex: 0, "data-version": v.id, onclick: () => show(v.id), onkeydown: (ev) => { if (ev.key === "Enter") show(v.id); } },
        h("td", {}, v.id), h("td", {}, v.task), h("td", {}, v.version),
        h("td", {}, badge(v.stage)), h("td", {}, fmt(v.mca, 3)), h("td", {}, when(v.created_at)), h("td", {}, when(v.promoted_at)),
        h("td", {}, can("ops") && v.stage !== "production" ? act("Promote", async () => {
          const choice = await promoteDialog(v);
          if (choice === "cancel") { toast("not promoted"); return false; }
          const out = await api(`/v1/models/${v.id}/promote`, { method: "POST", body: { force: choice === "force" } }); toast(out.message);
        }) : "")))),
    can("ops") ? h("p", {}, tasks.map((t) => act(`Roll back ${t}`, async () => {
      const out = await api("/v1/models/rollback", { method: "POST", body: { task: t } }); toast(`${t}: production is now ${out.version}`);
    }))) : "", detail);
}

// ---------------------------------------------------------------- training
const WORKER_HINT_S = 20;
async function trainingPage() {
  const body = h("tbody");
  const hint = h("div", { id: "worker-hint", class: "card warn", hidden: true });
  const refresh = guarded(async () => {
    const runs = await api("/v1/training-runs");
    const waiting = runs.filter((r) => r.status === "queued" && Date.now() - Date.parse(r.created_at) > WORKER_HINT_S * 1000);
    hint.hidden = !waiting.length;
    hint.replaceChildren(h("b", {}, `Run ${waiting.map((r) => r.id).join(", ")} is still queued: `),
      "no training worker has taken it. Start one on a machine with a GPU: ", h("code", {}, "hep2 worker -Q training"),
      " (it needs the same database, broker and bucket as the API).");
    body.replaceChildren(...runs.map((r) => h("tr", {}, h("td", {}, r.id), h("td", {}, r.task), h("td", {}, badge(r.status)),
      h("td", {}, h("div", { class: "progress" }, h("div", { style: `width:${Math.min(100, r.progress_pct)}%` })), `${fmt(r.progress_pct, 0)}%`,
        r.current_fold !== null ? h("span", { class: "muted" }, ` fold ${r.current_fold}/${r.folds ?? "?"} epoch ${r.current_epoch ?? "–"}`) : "",
        waiting.includes(r) ? h("div", { class: "warn" }, "waiting for a training worker") : ""),
      h("td", {}, r.requested_by || r.trigger), h("td", {}, when(r.created_at)), h("td", {}, r.error || ""),
      h("td", {}, can("ops") && ["queued", "running"].includes(r.status) && !r.cancel_requested
        ? h("button", { class: "secondary", type: "button", onclick: guarded(async () => { await api(`/v1/training-runs/${r.id}/cancel`, { method: "POST" }); refresh(); }) }, "Cancel")
        : r.cancel_requested ? "cancelling" : ""))));
  });
  let start = "";
  if (can("ops")) {
    const tasks = await api("/v1/training-tasks");  // only what the API accepts
    const task = h("select", { id: "training-task" }, tasks.map((t) => h("option", { value: t }, t.replace("_", " "))));
    start = h("p", {}, "Start training for ", task, " ", h("button", { type: "button", id: "start-training", onclick: guarded(async () => {
      const run = await api("/v1/training-runs", { method: "POST", body: { task: task.value } }); toast(`run ${run.id} queued`); refresh();
    }) }, "Start"));
  }
  refresh();
  timer = setInterval(refresh, 3000);  // live progress
  return h("div", {}, h("h1", {}, "Training runs"), start, hint,
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
