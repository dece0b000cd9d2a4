// The fleet page: one card per printer, kept current by the fleet's live stream.
"use strict";
(() => {
  const cards = new Map(JSON.parse(document.getElementById("fleet-data").textContent).map((c) => [c.id, c]));
  const list = document.getElementById("cards");
  const search = document.getElementById("search");
  const stateFilter = document.getElementById("state-filter");
  const empty = document.getElementById("empty");
  const count = document.getElementById("fleet-count");
  const { el } = lf;

  function gauge(card) {
    const label = lf.ZONE_WORDS[card.zone];
    return el("div", { class: "gauge", role: "img", "aria-label": `Failure detector: ${label} (${card.normalized_p.toFixed(2)})` },
      el("span", { class: `zone-${card.zone}`, text: label, style: "min-width:5.5rem;font-weight:600" }),
      el("div", { class: "bar" }, el("span", { class: "needle", style: `left:${Math.min(100, card.normalized_p * 100)}%` })));
  }

  function actionButton(card) {
    if (card.state === "Printing" || card.state === "Heating") return el("button", { class: "small secondary", "data-action": "pause", text: "Pause" });
    if (card.state === "Paused") return el("button", { class: "small", "data-action": "resume", text: "Resume" });
    return null;
  }

  function render(card) {
    const picture = card.picture
      ? el("a", { href: card.url, tabindex: "-1", "aria-hidden": "true" }, el("img", { class: "pic", src: card.picture, alt: "", loading: "lazy", width: 640, height: 480 }))
      : el("div", { class: "nopic" }, "No picture yet");
    const printing = lf.ON_A_PRINT.includes(card.state);
    const progress = printing && card.completion !== null
      ? [el("progress", { max: 100, value: card.completion, "aria-label": `Progress of ${card.name}` }),
         el("div", { class: "small", text: `${Math.floor(card.completion)} %${card.seconds_left !== null ? ` · ${lf.duration(card.seconds_left)} left` : ""}` })]
      : [];
    const temps = card.nozzle || card.bed
      ? el("div", { class: "small", text: `Nozzle ${lf.temperature(card.nozzle)} · Bed ${lf.temperature(card.bed)}` }) : null;
    const alert = card.paused_by_detector
      ? el("div", { class: "error small", text: card.paused_by_text })
      : card.paused_by ? el("div", { class: "small paused-by", text: card.paused_by_text })
      : card.alerting ? el("div", { class: "error small", text: "The failure detector raised an alert" }) : null;
    const body = el("div", { class: "body" },
      el("h2", {}, el("a", { href: card.url, text: card.name }), el("span", { class: `badge ${card.state}`, text: card.state })),
      card.state_text && card.state_text !== card.state ? el("div", { class: "small muted", text: card.state_text }) : null,
      printing && card.file ? el("div", { class: "file small", title: card.file, text: card.file }) : null,
      ...progress, temps,
      printing ? gauge(card) : null,
      alert,
      card.not_watching_reason && printing ? el("div", { class: "notwatched", text: `Not watched: ${card.not_watching_reason}` }) : null,
      card.watch_note && printing ? el("div", { class: "small muted watch-note", text: card.watch_note }) : null,
      el("div", { class: "actions" }, actionButton(card)));
    const item = el("li", { class: `pcard${card.alerting || card.paused_by_detector ? " alerting" : ""}`, "data-id": card.id, "data-state": card.state, "aria-label": `${card.name}: ${card.state}` }, picture, body);
    return item;
  }

  function visible(card) {
    const query = search.value.trim().toLowerCase();
    return (!stateFilter.value || card.state === stateFilter.value) && (!query || card.name.toLowerCase().includes(query));
  }

  // Brings the card on the page in line with a freshly rendered one, touching only what
  // differs: a button that did not change stays the same element, so a click that spans an
  // update is not lost, and an unchanged card costs no layout.
  function morph(target, source) {
    for (const { name } of [...target.attributes]) if (!source.hasAttribute(name)) target.removeAttribute(name);
    for (const { name, value } of source.attributes) if (target.getAttribute(name) !== value) target.setAttribute(name, value);
    const before = [...target.childNodes], after = [...source.childNodes];
    after.forEach((node, i) => {
      const current = before[i];
      if (!current) target.appendChild(node);
      else if (current.isEqualNode(node)) return;
      else if (current.nodeType === 1 && node.nodeType === 1 && current.tagName === node.tagName) morph(current, node);
      else target.replaceChild(node, current);
    });
    for (const extra of before.slice(after.length)) extra.remove();
  }

  function place(card) {
    const fresh = render(card);
    fresh.classList.toggle("hidden", !visible(card));
    const old = list.querySelector(`li[data-id="${card.id}"]`);
    if (old) {
      morph(old, fresh);
      return;
    }
    // Keep the server's order (by id) when a new printer joins.
    const after = [...list.children].find((li) => Number(li.dataset.id) > card.id);
    list.insertBefore(fresh, after || null);
  }

  function summarize() {
    const all = [...cards.values()];
    const shown = all.filter(visible).length;
    const printing = all.filter((c) => c.state === "Printing" || c.state === "Heating").length;
    count.textContent = `· ${all.length} printer${all.length === 1 ? "" : "s"}, ${printing} printing`;
    empty.classList.toggle("hidden", shown > 0);
    empty.textContent = all.length ? "No printer matches the search or the state filter." : "No printers yet. Link one on the “Link a printer” page.";
  }

  function applyFilter() {
    for (const li of list.children) li.classList.toggle("hidden", !visible(cards.get(Number(li.dataset.id))));
    summarize();
  }

  for (const card of cards.values()) place(card);
  summarize();
  search.addEventListener("input", applyFilter);
  stateFilter.addEventListener("change", applyFilter);

  list.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const card = cards.get(Number(button.closest("li").dataset.id));
    const action = button.dataset.action;
    if (action === "pause" && !(await lf.confirm(`Pause ${card.name}?`, "The print head moves away and the heaters follow the printer's pause settings.", "Pause print"))) return;
    button.disabled = true;
    try {
      const result = await lf.api("POST", `/api/v1/printers/${card.id}/${action}_print/`);
      if (!result.succeeded) lf.toast(`${card.name} did not ${action}: its agent is not connected or the print is no longer ${action === "pause" ? "running" : "paused"}.`, "bad");
      else lf.toast(`${action === "pause" ? "Pausing" : "Resuming"} ${card.name}…`);
    } catch (error) {
      lf.toast(error.message, "bad");
    } finally {
      button.disabled = false;
    }
  });

  const source = lf.live("/events/fleet", ({ cards: changed, removed }) => {
    for (const card of changed) { cards.set(card.id, card); place(card); }
    for (const id of removed) { cards.delete(id); list.querySelector(`li[data-id="${id}"]`)?.remove(); }
    summarize();
  }, document.getElementById("live"));

  // The server says when its failure detector falls behind (frames dropped or waiting too long).
  const behind = document.getElementById("watching-behind");
  const showNotice = (notice) => {
    behind.textContent = notice.text;
    behind.classList.toggle("hidden", !notice.behind);
  };
  source.addEventListener("hello", (event) => showNotice(JSON.parse(event.data).watching));
  source.addEventListener("watching", (event) => showNotice(JSON.parse(event.data)));
})();
