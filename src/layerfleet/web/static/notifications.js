// The Notifications page: add a target by channel and fields, then per target the on/off and
// per-event switches, quiet hours, Test, Delete and the delivery log (the v1 API).
"use strict";
(() => {
  const byId = (id) => document.getElementById(id);
  const root = byId("notifications-page");
  if (!root) return;
  const events = JSON.parse(byId("event-names").innerHTML);
  const api = "/api/v1/notification_targets/";
  const form = byId("add-target"), channel = byId("target-channel"), addError = byId("add-error");
  const list = byId("targets"), newSecret = byId("new-secret");

  try {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone) byId("add-timezone").value = zone;
  } catch (e) { /* keep UTC */ }

  function showChannel() {
    for (const set of form.querySelectorAll(".channel-fields")) {
      const on = set.dataset.channel === channel.value;
      set.classList.toggle("hidden", !on);
      set.disabled = !on;
    }
  }
  channel.addEventListener("change", showChannel);
  showChannel();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    addError.classList.add("hidden");
    const set = form.querySelector(`.channel-fields[data-channel="${channel.value}"]`);
    const fields = {};
    for (const input of set.querySelectorAll("input, select")) fields[input.name] = input.value;
    const body = {
      channel: channel.value, fields, name: byId("target-name").value, scope: byId("target-scope").value,
      events: [...form.querySelectorAll('input[name="events"]:checked')].map((box) => box.value),
      quiet_start: byId("add-quiet-start").value || null, quiet_end: byId("add-quiet-end").value || null,
      timezone: byId("add-timezone").value || "UTC",
    };
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const made = await lf.api("POST", "/notifications/targets/", body);
      newSecret.textContent = "";
      if (made.webhook_secret) {
        newSecret.append(lf.el("p", { text: "The webhook's signing secret, shown only now:" }),
          lf.el("code", { text: made.webhook_secret }));
      }
      for (const input of set.querySelectorAll("input")) if (input.type === "password") input.value = "";
      lf.toast(`Target "${made.name}" added.`);
      await load();
    } catch (e) {
      addError.textContent = e.message;
      addError.classList.remove("hidden");
    } finally {
      button.disabled = false;
    }
  });

  async function patch(target, changes, what) {
    try {
      const changed = await lf.api("PATCH", `${api}${target.id}/`, changes);
      Object.assign(target, changed);
      lf.toast(`${what} saved.`);
      return true;
    } catch (e) {
      lf.toast(e.message, "bad");
      return false;
    }
  }

  async function showLog(target, box) {
    box.textContent = "Loading…";
    try {
      const rows = await lf.api("GET", `${api}${target.id}/deliveries/`);
      box.textContent = "";
      if (!rows.length) { box.append(lf.el("p", { class: "muted", text: "Nothing sent yet." })); return; }
      const table = lf.el("table", {}, lf.el("thead", {}, lf.el("tr", {},
        ...["When", "Event", "Status", "Tries", "Error"].map((h) => lf.el("th", { scope: "col", text: h })))));
      const body = lf.el("tbody");
      for (const row of rows) {
        body.append(lf.el("tr", {},
          lf.el("td", { text: lf.when(row.sent_at || row.created_at) }),
          lf.el("td", { text: row.event + (row.digest ? " (in a digest)" : "") }),
          lf.el("td", { class: `status-${row.status}`, text: row.status }),
          lf.el("td", { text: String(row.attempts) }),
          lf.el("td", { text: row.last_error || "" })));
      }
      table.append(body);
      box.append(lf.el("div", { class: "table-wrap" }, table));
    } catch (e) {
      box.textContent = e.message;
    }
  }

  function item(target) {
    const id = `t${target.id}`;
    const li = lf.el("li", { class: "target", "aria-labelledby": `${id}-name` });
    const title = lf.el("h3", { id: `${id}-name`, text: target.name });
    const scope = target.scope === "user" ? "yours" : "the organization's";
    li.append(title, lf.el("div", { class: "url", text: `${target.url} · ${scope}` }));

    const enabled = lf.el("input", { type: "checkbox", id: `${id}-on` });
    enabled.checked = target.enabled;
    enabled.addEventListener("change", async () => {
      if (!(await patch(target, { enabled: enabled.checked }, enabled.checked ? "Turned on" : "Turned off"))) {
        enabled.checked = !enabled.checked;
      }
    });
    li.append(lf.el("label", { class: "inline", for: `${id}-on` }, enabled, "On"));

    const eventsBox = lf.el("fieldset", { class: "events" }, lf.el("legend", { text: "Events" }));
    for (const [value, text] of events) {
      const box = lf.el("input", { type: "checkbox", value });
      box.checked = target.events.includes(value);
      box.addEventListener("change", async () => {
        const wanted = [...eventsBox.querySelectorAll("input:checked")].map((b) => b.value);
        if (!(await patch(target, { events: wanted }, `${text}: ${box.checked ? "on" : "off"}`))) box.checked = !box.checked;
      });
      eventsBox.append(lf.el("label", { class: "inline" }, box, ` ${text}`));
    }
    li.append(eventsBox);

    const start = lf.el("input", { type: "time", id: `${id}-qs`, value: target.quiet_start || "" });
    const end = lf.el("input", { type: "time", id: `${id}-qe`, value: target.quiet_end || "" });
    const zone = lf.el("input", { id: `${id}-tz`, value: target.timezone, autocomplete: "off" });
    const saveQuiet = lf.el("button", { type: "button", class: "secondary small", text: "Save quiet hours" });
    saveQuiet.addEventListener("click", () => patch(target, {
      quiet_start: start.value || null, quiet_end: end.value || null, timezone: zone.value || "UTC" }, "Quiet hours"));
    li.append(lf.el("div", { class: "quiet" },
      lf.el("div", {}, lf.el("label", { for: `${id}-qs`, text: "Quiet from" }), start),
      lf.el("div", {}, lf.el("label", { for: `${id}-qe`, text: "until" }), end),
      lf.el("div", {}, lf.el("label", { for: `${id}-tz`, text: "Time zone" }), zone),
      lf.el("div", {}, saveQuiet)));

    const result = lf.el("p", { role: "status", "aria-live": "polite" });
    const test = lf.el("button", { type: "button", text: "Test", "aria-describedby": `${id}-name` });
    test.addEventListener("click", async () => {
      test.disabled = true;
      result.textContent = "Sending a test message…";
      try {
        const outcome = await lf.api("POST", `${api}${target.id}/test/`);
        result.textContent = outcome.sent ? "Test message sent." : `Not sent: ${outcome.error}`;
        result.className = outcome.sent ? "" : "error";
      } catch (e) {
        result.textContent = e.message;
        result.className = "error";
      } finally {
        test.disabled = false;
      }
    });
    const remove = lf.el("button", { type: "button", class: "danger", text: "Delete", "aria-describedby": `${id}-name` });
    remove.addEventListener("click", async () => {
      if (!(await lf.confirm(`Delete "${target.name}"?`, "Nothing more is sent to it; its delivery log goes too.", "Delete"))) return;
      try { await lf.api("DELETE", `${api}${target.id}/`); lf.toast("Target deleted."); await load(); }
      catch (e) { lf.toast(e.message, "bad"); }
    });
    li.append(lf.el("div", { class: "actions" }, test, remove), result);

    const log = lf.el("div");
    const details = lf.el("details", {}, lf.el("summary", { text: "Delivery log" }), log);
    details.addEventListener("toggle", () => { if (details.open) showLog(target, log); });
    li.append(details);
    return li;
  }

  async function load() {
    try {
      const targets = await lf.api("GET", api);
      list.textContent = "";
      if (!targets.length) list.append(lf.el("li", { class: "muted", text: "No targets yet: add one above." }));
      for (const target of targets) list.append(item(target));
    } catch (e) {
      list.textContent = "";
      list.append(lf.el("li", { class: "error", text: e.message }));
    }
  }
  load();
})();
