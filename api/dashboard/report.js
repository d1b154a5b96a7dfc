// hep2 specimen report page (report.html#ACCESSION): the images of one accession side by side, the titer
// table, representative cells per pattern, review reasons, sign-out and the LIS delivery; printable.
// Plain JS, no build step; the API key comes from the dashboard's login (sessionStorage of this tab).
"use strict";
const main = document.getElementById("main");

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem("hep2key") || ""}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = typeof data === "object" ? data.detail : data;
    const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    error.status = response.status;
    throw error;
  }
  return data;
}

function accession() { return decodeURIComponent(location.hash.replace(/^#\/?/, "").split("?")[0]); }
function versionWanted() { const m = location.hash.match(/[?&]version=(\d+)/); return m ? Number(m[1]) : null; }

async function render() {
  const acc = accession();
  document.getElementById("accession-input").value = acc;
  if (!sessionStorage.getItem("hep2key")) {
    main.replaceChildren(h("p", {}, "Please ", h("a", { href: "index.html#/login" }, "log in"), " first."));
    return;
  }
  if (!acc) { await listPage(); return; }
  let report;
  try {
    const v = versionWanted();
    report = await api(`/v1/reports/${encodeURIComponent(acc)}${v ? `?version=${v}` : ""}`);
  } catch (e) {
    main.replaceChildren(h("p", { class: "error" }, e.message));
    return;
  }
  const details = await Promise.all(report.images.map((i) => api(`/v1/specimens/${i.slide_id}`).catch(() => null)));
  main.replaceChildren(page(report, details));
  document.getElementById("print-footer").textContent =
    `Accession ${report.accession} · report version ${report.version} (${report.status})` +
    (report.signed_out_at ? ` · signed out by ${report.signed_out_by} at ${when(report.signed_out_at)}` : " · NOT SIGNED OUT") +
    ` · printed ${new Date().toLocaleString()} · hep2`;
}

async function listPage() {
  const status = h("select", { id: "report-status-filter", onchange: () => load() },
    ["", "draft", "final", "corrected"].map((s) => h("option", { value: s }, s || "all")));
  const body = h("tbody");
  const load = async () => {
    const rows = await api(`/v1/reports?limit=200${status.value ? `&status=${status.value}` : ""}`);
    body.replaceChildren(...rows.map((r) => h("tr", { class: "click", "data-accession": r.accession,
      onclick: () => (location.hash = `#${encodeURIComponent(r.accession)}`) },
      h("td", {}, r.accession), h("td", {}, r.patient || "–"), h("td", {}, h("span", { class: `badge status-${r.status}` }, r.status), ` v${r.version}`),
      h("td", {}, r.result), h("td", {}, r.titer || "–"), h("td", {}, r.patterns.map(label).join(", ") || "–"),
      h("td", {}, r.images), h("td", {}, r.needs_review ? "yes" : ""), h("td", {}, r.lis || "–"), h("td", {}, when(r.updated_at)))));
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No reports.")));
  };
  main.replaceChildren(h("h1", {}, "Specimen reports"), h("div", { class: "filters no-print" }, h("label", {}, "status", status)),
    h("table", { id: "reports" }, h("thead", {}, h("tr", {}, ["accession", "patient", "report", "result", "titer", "pattern(s)", "images", "review", "LIS", "updated"].map((c) => h("th", {}, c)))), body));
  await load();
}

function page(r, details) {
  const overlays = {};
  const names = Object.fromEntries(r.images.map((i) => [i.slide_id, i.name]));
  details.forEach((d, i) => { if (d && d.overlay_url) overlays[r.images[i].slide_id] = d.overlay_url; });
  const titer = r.titer.text === "negative" ? `negative (${r.titer.below || ""})` : r.titer.text || "not titrated";
  const versionSelect = h("select", { id: "version", class: "no-print", onchange: (ev) => {
    location.hash = `#${encodeURIComponent(r.accession)}?version=${ev.target.value}`; } },
    r.versions.map((v) => h("option", { value: v.version, selected: v.version === r.version }, `v${v.version} ${v.status}`)));
  const head = h("div", { class: "card" },
    h("div", { class: "report-head" },
      h("div", {}, h("div", { class: "muted" }, "Accession"), h("div", { class: "big", id: "report-accession" }, r.accession)),
      h("div", {}, h("div", { class: "muted" }, "Patient (pseudonymised)"), h("div", {}, r.patient || "–")),
      h("div", {}, h("div", { class: "muted" }, "Result"), h("div", { class: "big", id: "report-result" }, r.result)),
      h("div", {}, h("div", { class: "muted" }, "End-point titer"), h("div", { class: "big", id: "report-titer" }, titer)),
      h("div", {}, h("div", { class: "muted" }, "Intensity"), h("div", {}, r.intensity || "–")),
      h("div", {}, h("div", { class: "muted" }, "Report"),
        h("div", {}, h("span", { class: `badge status-${r.status}`, id: "report-status" }, r.status), ` version ${r.version} `, versionSelect))),
    h("h2", {}, "Pattern(s)"),
    r.patterns.length ? h("table", { id: "patterns" }, h("tr", {}, ["pattern", "ICAP", "compartment", "end-point", "images"].map((c) => h("th", {}, c))),
      r.patterns.map((p) => h("tr", {}, h("td", {}, label(p.pattern)), h("td", {}, p.icap || "–"), h("td", {}, p.compartment),
        h("td", {}, p.endpoint || "–"), h("td", {}, p.images.length))))
      : h("p", { class: "muted" }, "No pattern (negative)."),
    r.mixed ? h("p", {}, "Mixed result: every pattern above is reported.") : null,
    r.signed_out_at ? h("p", { id: "signed-out" }, `Signed out by ${r.signed_out_by} at ${when(r.signed_out_at)}`,
      r.amendment_reason ? ` · amendment: ${r.amendment_reason}` : "") : h("p", { class: "muted" }, "Not signed out (preliminary)."));

  const reasons = h("div", { class: "card", id: "reasons" }, h("h2", {}, "Review"),
    r.review_reasons.length ? h("ul", { class: "reasons" }, r.review_reasons.map((x) => h("li", {}, x.reason)))
      : h("p", { class: "muted" }, "Nothing needs review."));

  const series = h("div", { class: "card" }, h("h2", {}, "Dilution series"),
    r.titer.series.length ? h("table", { id: "titer-table" },
      h("tr", {}, ["dilution", "result", "pattern(s)", "intensity", "images"].map((c) => h("th", {}, c))),
      r.titer.series.map((s) => h("tr", {}, h("td", {}, s.dilution), h("td", {}, s.positive ? "positive" : "negative"),
        h("td", {}, s.patterns.map(label).join(", ") || "–"), h("td", {}, s.intensity || "–"), h("td", {}, s.images.map((id) => names[id] || id).join(", ")))))
      : h("p", { class: "muted" }, "No dilutions in the sidecars."));

  const images = h("div", { class: "images", id: "images" }, r.images.map((i) => h("div", { class: `image-card ${i.positive ? "" : "negative"}`, "data-slide": i.slide_id },
    overlays[i.slide_id] ? h("img", { src: overlays[i.slide_id], alt: `overlay of ${i.name}`, "data-slide": i.slide_id }) : h("div", { class: "muted" }, "no overlay"),
    h("div", {}, h("strong", {}, i.dilution || "no dilution"), ` · ${i.well || ""} · `, h("a", { href: `index.html#/specimen/${i.slide_id}` }, i.name)),
    h("div", {}, `${label(i.pattern)}${i.second_pattern ? " + " + label(i.second_pattern) : ""} · ${i.intensity || "–"} · ${pct(i.confidence)}`),
    h("div", { class: "muted" }, i.status.replace("_", " "), i.reviewed ? " · reviewed" : "", i.needs_review && !i.reviewed ? ` · needs review: ${i.review_reason || ""}` : ""))));

  const cells = h("div", { class: "card", id: "cells" }, h("h2", {}, "Representative cells"),
    r.patterns.map((p) => h("div", {}, h("h3", {}, `${label(p.pattern)} (${p.icap || "–"})`),
      p.representative_cells.length ? h("div", { class: "cells-row" }, p.representative_cells.map((c) => cellThumb(c, overlays[c.slide_id])))
        : h("p", { class: "muted" }, "No single cell is classified as this pattern (a specimen-level call)."))));

  const parts = [h("h1", {}, `Specimen report ${r.accession}`), head, reasons, series, h("h2", {}, "Images"), images, cells];
  parts.push(lisCard(r));
  if (r.status === "draft" && can("reviewer")) parts.push(signOutCard(r));
  parts.push(messagesCard(r));
  return h("div", {}, parts);
}

function cellThumb(c, url) {
  const canvas = h("canvas", { width: 96, height: 96 });
  if (url) {
    const img = new Image();
    img.onload = () => {
      const [x, y, w, hh] = c.bbox, pad = Math.round(Math.max(w, hh) * 0.15);
      canvas.getContext("2d").drawImage(img, x - pad, y - pad, w + 2 * pad, hh + 2 * pad, 0, 0, 96, 96);
    };
    img.src = url;
  }
  return h("div", { class: "cell-thumb", title: `cell ${c.cell_id} of image ${c.slide_id}` }, canvas, pct(c.confidence));
}

function lisCard(r) {
  const l = r.lis;
  return h("div", { class: "card no-print", id: "lis" }, h("h2", {}, "Delivery to the LIS"),
    l ? h("p", {}, `HL7 ${l.control_id}: `, h("strong", { id: "lis-status" }, l.status), ` after ${l.attempts} attempt(s)`,
      l.ack ? ` · ACK ${l.ack}` : "", l.sent_at ? ` · ${when(l.sent_at)}` : "", l.last_error ? ` · last error: ${l.last_error}` : "")
      : h("p", { class: "muted" }, "Sent to the LIS once signed out."));
}

function signOutCard(r) {
  const amendment = r.versions.some((v) => v.status !== "draft" && v.version < r.version);
  const reason = h("textarea", { id: "signout-reason", placeholder: amendment ? "reason for the amendment (required)" : "comment (optional)" });
  const error = h("p", { class: "error", id: "signout-error" });
  const button = h("button", { id: "sign-out", type: "button", onclick: async () => {
    button.disabled = true; error.textContent = "";
    try {
      await api(`/v1/reports/${encodeURIComponent(r.accession)}/sign-out`, { method: "POST",
        body: { version: r.version, reason: reason.value || null } });
      toast(`version ${r.version} signed out`);
      location.hash = `#${encodeURIComponent(r.accession)}`;
      await render();
    } catch (e) { error.textContent = e.message; button.disabled = false; }
  } }, amendment ? "Sign out amendment" : "Sign out");
  return h("div", { class: "card signout" }, h("h2", {}, amendment ? "Sign out the amended report" : "Sign out"),
    h("p", { class: "muted" }, amendment ? "An earlier version was signed out: this one is sent to the LIS as a corrected result."
      : "Final: the report is sent to the LIS as HL7 ORU^R01."), reason, h("p", {}, button), error);
}

function messagesCard(r) {
  const pre = h("pre", { id: "message", hidden: true });
  const show = (fmt) => async () => {
    const data = await api(`/v1/reports/${encodeURIComponent(r.accession)}?format=${fmt}&version=${r.version}`);
    pre.textContent = typeof data === "string" ? data.replaceAll("\r", "\n") : JSON.stringify(data, null, 2);
    pre.hidden = false;
  };
  return h("div", { class: "card no-print" }, h("h2", {}, "Messages"),
    h("p", {}, h("button", { type: "button", class: "secondary", id: "show-hl7", onclick: show("hl7") }, "HL7 v2"), " ",
      h("button", { type: "button", class: "secondary", id: "show-fhir", onclick: show("fhir") }, "FHIR R4"), " ",
      h("button", { type: "button", class: "secondary", id: "show-json", onclick: show("json") }, "JSON")), pre);
}

document.getElementById("print").addEventListener("click", () => window.print());
document.getElementById("open-report").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = `#${encodeURIComponent(document.getElementById("accession-input").value.trim())}`;
});
window.addEventListener("hashchange", render);
render();
