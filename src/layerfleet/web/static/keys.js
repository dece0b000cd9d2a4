// The "Link a printer" and "Keys" pages: linking codes, and creating and revoking keys.
"use strict";
(() => {
  const byId = (id) => document.getElementById(id);

  async function copyText(text) {
    // The Clipboard API exists only on HTTPS or localhost; a farm server is often plain HTTP on the LAN.
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(text); return true; } catch (e) { /* fall back below */ }
    }
    const focused = document.activeElement;
    const area = lf.el("textarea", { readonly: true, "aria-hidden": "true" });
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    let copied = false;
    try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
    area.remove();
    if (focused instanceof HTMLElement) focused.focus();
    return copied;
  }

  async function copyAndSay(text, what) {
    if (await copyText(text)) lf.toast(`${what} copied.`);
    else lf.toast(`Copying failed: select the ${what.toLowerCase()} and copy it yourself.`, "bad");
  }

  function wireCopyButtons(root) {
    for (const button of root.querySelectorAll("[data-copy]")) {
      button.addEventListener("click", () => copyAndSay(byId(button.dataset.copy).textContent.trim(), "Text"));
    }
  }

  // --- Link a printer ---------------------------------------------------------------------------

  function countdown(seconds) {
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return h ? `${h} h ${m} min ${s} s` : m ? `${m} min ${s} s` : `${s} s`;
  }

  function linkPage() {
    wireCopyButtons(document);
    const button = byId("get-code");
    if (!button) return; // the member's role cannot link; the page says so
    const target = byId("link-target");
    const box = byId("code-box"), codeText = byId("link-code"), copyCode = byId("copy-code");
    const expiry = byId("link-expiry"), state = byId("link-state");
    let current = null; // {id, code} of the code on show
    let deadline = 0; // when it expires, by this browser's clock
    let poller = null, ticker = null, busy = false;

    function stop() {
      clearInterval(poller);
      clearInterval(ticker);
      poller = ticker = null;
    }

    function say(text, kind = "") {
      if (state.textContent === text) return; // a live region repeats what is set again
      state.className = `linkstate ${kind}`;
      state.textContent = text;
    }

    function tick() {
      const left = Math.round((deadline - Date.now()) / 1000);
      if (left > 0) { expiry.textContent = `Expires in ${countdown(left)}`; return; }
      expiry.textContent = "Expired; getting a new code…";
      getCode();
    }

    function showLinked(status) {
      stop();
      current = null;
      codeText.classList.add("used");
      copyCode.classList.add("hidden");
      expiry.textContent = "Used";
      button.textContent = "Link another printer";
      if (status.printer_id === null) { say("Linked.", "ok"); return; } // archived since
      say(`Linked: ${status.printer_name}. `, "ok");
      state.append(lf.el("a", { href: `/printers/${status.printer_id}/`, text: "Open its page" }));
    }

    async function poll() {
      const asked = current;
      if (!asked || document.hidden) return;
      let status;
      try {
        status = await lf.api("GET", `/link/codes/${asked.id}/`);
      } catch (e) {
        // A network hiccup passes; the next poll tries again.
        say(`Cannot check whether the code was used: ${e.message}`, "error");
        return;
      }
      if (asked !== current) return;
      if (status.linked) { showLinked(status); return; }
      if (state.classList.contains("error")) say("Waiting for a printer to use this code…");
      deadline = Date.now() + status.seconds_left * 1000;
      tick();
    }

    async function getCode() {
      if (busy) return;
      busy = true;
      button.disabled = true;
      stop();
      try {
        const query = target && target.value ? `?printer_id=${encodeURIComponent(target.value)}` : "";
        const code = await lf.api("GET", `/api/v1/onetimeverificationcodes/${query}`);
        current = { id: code.id, code: code.code };
        deadline = Date.parse(code.expired_at);
        codeText.textContent = code.code;
        codeText.classList.remove("used");
        copyCode.classList.remove("hidden");
        for (const slot of document.querySelectorAll("[data-code]")) slot.textContent = code.code;
        box.classList.remove("hidden");
        button.textContent = "Get a linking code";
        say("Waiting for a printer to use this code…");
        poller = setInterval(poll, 2000);
        ticker = setInterval(tick, 1000);
        await poll();
      } catch (e) {
        say(e.message, "error");
      } finally {
        busy = false;
        button.disabled = false;
      }
    }

    button.addEventListener("click", getCode);
    if (target) target.addEventListener("change", () => { if (current) getCode(); });
    copyCode.addEventListener("click", () => copyAndSay(codeText.textContent, "Code"));
  }

  // --- Keys -------------------------------------------------------------------------------------

  // A credential used this recently is most likely in use right now (the demo's simulated
  // printers, a script, an agent): revoking it breaks that program, so the confirmation warns.
  const RECENT_USE_MINUTES = 10;

  function minutesSinceUse(key) {
    return key.last_used_at ? Math.max(0, (Date.now() - Date.parse(key.last_used_at)) / 60000) : null;
  }

  function agoText(minutes) {
    if (minutes < 1) return "less than a minute ago";
    if (minutes < 90) return `${Math.round(minutes)} min ago`;
    if (minutes < 48 * 60) return `${Math.round(minutes / 60)} h ago`;
    return `${Math.round(minutes / 1440)} days ago`;
  }

  function lastUse(key) {
    const minutes = minutesSinceUse(key);
    return minutes === null ? "never" : `${lf.when(key.last_used_at)} (${agoText(minutes)})`;
  }

  const KINDS = {
    token: {
      noun: "API token",
      label: (k) => k.name || `${k.key_prefix}…`,
      facts: (k) => [["Token", lf.el("code", { text: `${k.key_prefix}…` })], ["Created", lf.when(k.created_at)],
        ["Last used", lastUse(k)]],
      body: (form) => ({ name: form.elements.namedItem("name").value }),
      secrets: (k) => [["Token", k.key]],
      example: (k, base) => `curl -H "Authorization: Token ${k.key}" ${base}/api/v1/printers/`,
      effect: "Programs using it will be refused by the API from now on. This cannot be undone.",
    },
    access: {
      noun: "access key",
      label: (k) => k.name || k.access_key,
      facts: (k) => [["Access key", lf.el("code", { text: k.access_key })], ["Created", lf.when(k.created_at)],
        ["Last used", lastUse(k)]],
      body: (form) => ({ name: form.elements.namedItem("name").value }),
      secrets: (k) => [["Access key", k.access_key], ["Secret key", k.secret_key]],
      example: (k, base) => `curl -u ${k.access_key}:${k.secret_key} ${base}/api/v3/devices`,
      effect: "Programs using it will be refused by the print-farm API from now on. This cannot be undone.",
    },
    printwatch: {
      noun: "PrintWatch key",
      label: (k) => k.name || `${k.key_prefix}…`,
      facts: (k) => [["Key", lf.el("code", { text: `${k.key_prefix}…` })],
        ["Devices", `${k.devices.length} of ${k.device_limit} used`], ["Issued to", k.issued_to],
        ["Created", lf.when(k.created_at)], ["Last used", lastUse(k)]],
      body: (form) => ({
        name: form.elements.namedItem("name").value,
        device_limit: Number(form.elements.namedItem("device_limit").value),
      }),
      secrets: (k) => [["API key", k.key]],
      example: null,
      effect: "Its PrintWatch clients will be refused from now on and its printers freed for another key. This cannot be undone.",
    },
  };

  function keySection(section, base) {
    const kind = KINDS[section.dataset.kind];
    const url = section.dataset.url;
    const canRevoke = section.dataset.canManage !== "false";
    const heading = section.querySelector("h2");
    const list = section.querySelector(".keylist");
    const form = section.querySelector("form");
    const secret = section.querySelector(".secret");
    let shownId = null; // the key whose secret is on show

    function hideSecret() {
      secret.replaceChildren();
      shownId = null;
    }

    function item(key) {
      const label = kind.label(key);
      const meta = lf.el("div", { class: "meta" });
      for (const [name, value] of kind.facts(key)) meta.append(lf.el("span", {}, `${name}: `, value));
      if (key.revoked_at) meta.append(lf.el("span", {}, lf.el("span", { class: "badge", text: "Revoked" }), ` ${lf.when(key.revoked_at)}`));
      const row = lf.el("li", { class: key.revoked_at ? "revoked" : "" },
        lf.el("div", { class: "what" }, lf.el("div", { class: "name", text: label }), meta));
      if (!key.revoked_at && canRevoke) {
        const revokeButton = lf.el("button", { type: "button", class: "danger small", "aria-label": `Revoke ${kind.noun} ${label}` }, "Revoke");
        revokeButton.addEventListener("click", () => revoke(key));
        row.append(revokeButton);
      }
      return row;
    }

    async function load() {
      let keys;
      try {
        keys = await lf.api("GET", url);
      } catch (e) {
        list.replaceChildren(lf.el("li", { class: "error", text: `The list could not be loaded: ${e.message}` }));
        return;
      }
      // Live keys first, newest first; revoked ones stay listed, for the record.
      keys.sort((a, b) => (!!a.revoked_at - !!b.revoked_at) || b.id - a.id);
      list.replaceChildren(...(keys.length ? keys.map(item) : [lf.el("li", { class: "muted", text: `No ${kind.noun}s yet.` })]));
    }

    function showSecret(key) {
      const fields = lf.el("dl");
      for (const [name, value] of kind.secrets(key)) {
        const copy = lf.el("button", { type: "button", class: "secondary small", "aria-label": `Copy the ${name.toLowerCase()}` }, "Copy");
        copy.addEventListener("click", () => copyAndSay(value, name));
        fields.append(lf.el("dt", { text: name }), lf.el("dd", {}, lf.el("code", { class: "secret-value", text: value }), copy));
      }
      const done = lf.el("button", { type: "button", class: "secondary" }, "I have saved it");
      done.addEventListener("click", () => { hideSecret(); heading.focus(); });
      secret.replaceChildren(
        lf.el("p", {}, lf.el("strong", { text: `New ${kind.noun} “${kind.label(key)}”.` }),
          " Copy it now: it will not be shown again."),
        fields,
        kind.example ? lf.el("p", { class: "muted try" }, "Try it:") : null,
        kind.example ? lf.el("pre", { text: kind.example(key, base) }) : null,
        lf.el("div", { class: "actions" }, done),
      );
      shownId = key.id;
      secret.querySelector("dd button").focus();
    }

    function invalidField() {
      for (const input of form.querySelectorAll("input")) {
        if (input.checkValidity()) { input.removeAttribute("aria-invalid"); continue; }
        input.setAttribute("aria-invalid", "true");
        const label = form.querySelector(`label[for="${input.id}"]`);
        return { input, message: `${label ? label.textContent : input.name}: ${input.validationMessage}` };
      }
      return null;
    }

    async function create(event) {
      event.preventDefault();
      const error = form.querySelector(".error");
      const submit = form.querySelector("button[type=submit]");
      error.classList.add("hidden");
      const invalid = invalidField();
      if (invalid) {
        error.textContent = invalid.message;
        error.classList.remove("hidden");
        invalid.input.focus();
        return;
      }
      submit.disabled = true;
      try {
        const created = await lf.api("POST", url, kind.body(form));
        form.reset();
        await load();
        showSecret(created);
      } catch (e) {
        error.textContent = e.message;
        error.classList.remove("hidden");
      } finally {
        submit.disabled = false;
      }
    }

    async function revoke(key) {
      const label = kind.label(key);
      const minutes = minutesSinceUse(key);
      const inUse = minutes !== null && minutes < RECENT_USE_MINUTES
        ? `Warning: it was used ${agoText(minutes)}, so a program is probably using it right now (the demo's simulated printers, a script, an agent); it will stop working. `
        : "";
      if (!await lf.confirm(`Revoke the ${kind.noun} “${label}”?`, inUse + kind.effect, "Revoke")) return;
      try {
        await lf.api("DELETE", `${url}${key.id}/`);
      } catch (e) {
        lf.toast(e.message, "bad");
        return;
      }
      if (shownId === key.id) hideSecret();
      lf.toast(`The ${kind.noun} “${label}” is revoked.`);
      await load();
      heading.focus(); // its button is gone; keep keyboard users in the section
    }

    if (form) form.addEventListener("submit", create);
    load();
  }

  if (byId("link")) linkPage();
  const keysPage = byId("keys-page");
  if (keysPage) for (const section of keysPage.querySelectorAll("section.keys")) keySection(section, keysPage.dataset.baseUrl);
})();
