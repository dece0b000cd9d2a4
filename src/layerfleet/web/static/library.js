// The library page: uploads followed while they slice, builds, and builds sent to printers,
// all through the Eiger v3 API (it accepts this page's session cookie). The lists are rendered
// by the server; after a change the page fetches the changed list again.
"use strict";
(() => {
  const V3 = "/api/v3";
  const SLICE_WORDS = { REQUESTED: "Queued", QUEUED: "Queued", IN_PROGRESS: "Slicing", COMPLETED: "Sliced", ERROR: "Error", CANCELED: "Cancelled" };
  const FINISHED = new Set(["COMPLETED", "ERROR", "CANCELED"]);
  const POLL_MS = 1000;
  const PRINTERS_REFRESH_MS = 3000;
  const followed = new Set(); // slice jobs being polled, so that none is polled twice
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // --- lists --------------------------------------------------------------------------------------

  async function refresh(name) {
    const section = $(name);
    let response;
    try { response = await fetch(`/library/sections/${name}`, { credentials: "same-origin" }); }
    catch (e) { throw new Error("The server cannot be reached. Check your connection and try again."); }
    if (response.status === 401) throw new Error("Your session has ended. Sign in again to continue.");
    if (!response.ok) throw new Error("The list could not be reloaded; reload the page.");
    const html = await response.text();
    const body = section.querySelector(".section-body");
    // Replacing the list drops the focused control with it: keep keyboard users in the section.
    const hadFocus = body.contains(document.activeElement);
    body.innerHTML = html;
    decorate(section);
    if (hadFocus) section.querySelector("h2").focus();
  }

  function refreshQuietly(name) {
    refresh(name).catch((e) => lf.toast(e.message, "bad"));
  }

  function decorate(root) {
    for (const time of root.querySelectorAll("time[datetime]")) time.textContent = lf.when(time.getAttribute("datetime"));
    for (const row of root.querySelectorAll("[data-slice-job]")) follow(row.dataset.sliceJob, row.closest("[data-section]").dataset.section);
  }

  function showSliceState(job, status) {
    const words = SLICE_WORDS[status] || status;
    for (const badge of document.querySelectorAll(`[data-slice-job="${CSS.escape(job)}"] .slicing .badge`)) {
      badge.textContent = words;
      badge.className = `badge slice-${words}`;
    }
  }

  // Polls a slice job until it has finished; onChange(body) on each new status.
  async function watchSlice(job, onChange) {
    let last = null;
    let failures = 0;
    for (;;) {
      let body;
      try {
        body = await lf.api("GET", `${V3}/parts/slice_status/${job}`);
        failures = 0;
      } catch (e) {
        if (++failures >= 5) throw e;
        await sleep(POLL_MS * 2);
        continue;
      }
      if (body.status !== last) {
        last = body.status;
        showSliceState(job, body.status);
        onChange(body);
      }
      if (FINISHED.has(body.status)) return body;
      await sleep(POLL_MS);
    }
  }

  // A job listed as unfinished (sliced by someone else, or before a reload): its list is
  // fetched again when it is done.
  function follow(job, section) {
    if (followed.has(job)) return;
    followed.add(job);
    watchSlice(job, () => {})
      .then(() => refresh(section))
      .catch((e) => lf.toast(e.message, "bad"))
      .finally(() => followed.delete(job));
  }

  // --- upload -------------------------------------------------------------------------------------

  const upload = {
    form: $("upload-form"), file: $("stl-file"), name: $("part-name"), preset: $("preset"), button: $("upload-button"),
    box: $("upload-status"), title: $("upload-title"), state: $("upload-state"), progress: $("upload-progress"),
    message: $("upload-message"), error: $("upload-error"), result: $("upload-result"), time: $("upload-time"),
    material: $("upload-material"), cancel: $("upload-cancel"),
  };
  let uploadTurn = 0; // a newer upload takes the status box over
  let uploadJob = null;

  function showUpload({ state, message = "", error = "", busy = false }) {
    upload.box.hidden = false;
    upload.state.textContent = state;
    upload.state.className = `badge slice-${state}`;
    upload.message.textContent = message;
    upload.error.textContent = error;
    // No percentage comes from the slicer: the bar only says that something is under way.
    upload.progress.hidden = !busy;
    upload.progress.removeAttribute("value");
  }

  function nameOfUpload(file) {
    // The file name carries the part's name to the API (which takes the title from it).
    const typed = upload.name.value.trim().replace(/[\\/]+/g, "-");
    return { title: typed || file.name.replace(/\.stl$/i, ""), filename: typed ? `${typed}.stl` : file.name };
  }

  upload.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = upload.file.files[0];
    if (!file) {
      upload.box.hidden = false;
      showUpload({ state: "Refused", error: "Choose an STL file to upload." });
      upload.file.focus();
      return;
    }
    const turn = ++uploadTurn;
    const mine = () => turn === uploadTurn;
    const { title, filename } = nameOfUpload(file);
    const data = new FormData();
    data.append("stlFile", file, filename);
    data.append("settingsPresetId", upload.preset.value);
    upload.title.textContent = title;
    upload.result.hidden = true;
    upload.cancel.hidden = true;
    showUpload({ state: "Uploading", message: `Uploading ${file.name}…`, busy: true });
    upload.button.disabled = true;
    let created;
    try {
      created = await lf.api("POST", `${V3}/parts/upload_stl`, data);
    } catch (e) {
      if (mine()) showUpload({ state: "Refused", error: `${file.name} was not accepted: ${e.message}` });
      return;
    } finally {
      upload.button.disabled = false;
    }
    upload.form.reset();
    const job = created.slice_job_id;
    followed.add(job);
    if (mine()) {
      uploadJob = job;
      upload.cancel.hidden = false;
      showUpload({ state: "Queued", message: `${title} is waiting for the slicer.`, busy: true });
    }
    refreshQuietly("parts");
    try {
      const final = await watchSlice(job, (body) => {
        if (!mine() || FINISHED.has(body.status)) return;
        const words = SLICE_WORDS[body.status];
        showUpload({ state: words, message: words === "Slicing" ? `Slicing ${title}…` : `${title} is waiting for the slicer.`, busy: true });
      });
      await refresh("parts");
      if (!mine()) return;
      upload.cancel.hidden = true;
      if (final.status === "COMPLETED") {
        const row = document.querySelector(`#parts tr[data-version="${CSS.escape(created.part_version_id)}"]`);
        const estimate = row ? row.querySelector(".estimate").textContent : "–";
        const material = row ? row.querySelector(".material").textContent : "–";
        upload.time.textContent = estimate;
        upload.material.textContent = material;
        upload.result.hidden = false;
        showUpload({ state: "Sliced", message: `${title} is sliced: about ${estimate} to print, ${material}.` });
      } else if (final.status === "ERROR") {
        showUpload({ state: "Error", error: `PrusaSlicer could not slice ${title}: ${final.message || "no reason given"}` });
      } else {
        showUpload({ state: "Cancelled", message: `Slicing ${title} was cancelled.` });
      }
    } catch (e) {
      if (mine()) showUpload({ state: "Error", error: e.message });
    } finally {
      followed.delete(job);
    }
  });

  upload.cancel.addEventListener("click", () => cancelSlice(uploadJob, upload.cancel));

  async function cancelSlice(job, button) {
    if (!job) return;
    button.disabled = true;
    try {
      await lf.api("POST", `${V3}/parts/slice_status/${job}/cancel`);
      lf.toast("Slicing cancelled.");
    } catch (e) {
      lf.toast(`Slicing was not cancelled: ${e.message}`, "bad");
    } finally {
      button.disabled = false;
    }
  }

  // --- builds -------------------------------------------------------------------------------------

  const build = {
    dialog: $("build-dialog"), form: $("build-form"), part: $("build-part"), title: $("build-title"),
    quantity: $("build-quantity"), error: $("build-error"), cancel: $("build-cancel"), version: null, preset: null,
  };

  function openBuildDialog(button) {
    build.version = button.dataset.version;
    build.preset = button.dataset.preset;
    build.part.textContent = button.dataset.title;
    build.title.value = button.dataset.title;
    build.quantity.value = "1";
    build.error.textContent = "";
    build.dialog.showModal();
    build.title.select();
  }

  build.cancel.addEventListener("click", () => build.dialog.close());

  build.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = build.title.value.trim();
    const quantity = Number(build.quantity.value);
    if (!title) {
      build.error.textContent = "Give the build a title.";
      build.title.focus();
      return;
    }
    if (!Number.isInteger(quantity) || quantity < 1 || quantity > 100) {
      build.error.textContent = "Instances on the plate: a whole number from 1 to 100.";
      build.quantity.focus();
      return;
    }
    const submit = build.form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const made = await lf.api("POST", `${V3}/builds`, {
        title,
        part_versions: Array.from({ length: quantity }, () => ({ part_version: build.version })),
        settingsPresetId: build.preset,
      });
      build.dialog.close();
      lf.toast(made.slice_job_id ? `Build “${made.title}” made; its plate is being sliced.` : `Build “${made.title}” is ready to print.`);
      await refresh("builds");
    } catch (e) {
      build.error.textContent = `The build was not made: ${e.message}`;
    } finally {
      submit.disabled = false;
    }
  });

  // --- printers and queues ------------------------------------------------------------------------

  function chosenPrinter(button) {
    const select = button.closest("tr").querySelector(".send-printer");
    const option = select.options[select.selectedIndex];
    return { id: select.value, name: option.textContent };
  }

  function buildTitle(button) {
    return button.closest("tr").querySelector(".name .title").textContent.trim();
  }

  async function printNow(button) {
    const printer = chosenPrinter(button);
    const title = buildTitle(button);
    const ok = await lf.confirm("Print now?", `Start “${title}” on ${printer.name} now? Its bed must be clear.`, "Print now");
    if (!ok) return;
    await lf.api("POST", `${V3}/devices/${printer.id}`, { build: button.dataset.build });
    lf.toast(`“${title}” was sent to ${printer.name}.`);
    refreshQuietly("printers");
  }

  async function addToQueue(button) {
    const printer = chosenPrinter(button);
    const title = buildTitle(button);
    await lf.api("POST", `${V3}/devices/${printer.id}/queue`, { build: button.dataset.build });
    lf.toast(`“${title}” was added to the queue of ${printer.name}.`);
    await refresh("printers");
  }

  function printerName(button) {
    return button.closest("[data-device]").dataset.name;
  }

  async function removeFromQueue(button) {
    const name = printerName(button);
    const ok = await lf.confirm("Remove from the queue?", `Remove “${button.dataset.title}” from the queue of ${name}?`, "Remove");
    if (!ok) return;
    await lf.api("DELETE", `${V3}/devices/${button.dataset.device}/queue/${button.dataset.entry}`);
    lf.toast(`“${button.dataset.title}” was removed from the queue of ${name}.`);
    await refresh("printers");
  }

  async function startNext(button) {
    const name = printerName(button);
    const ok = await lf.confirm("Start the next build?", `Is the bed of ${name} clear? The first build of its queue starts printing.`, "Start printing");
    if (!ok) return;
    await lf.api("POST", `${V3}/devices/${button.dataset.device}/queue/start_next`);
    lf.toast(`${name} is starting the next build of its queue.`);
    await refresh("printers");
  }

  async function sliceAgain(button) {
    const sliced = await lf.api("POST", `${V3}/parts/${button.dataset.part}/slice`);
    lf.toast(`Slicing “${button.dataset.title}” again.`);
    await refresh("parts");
    follow(sliced.slice_job_id, "parts");
  }

  async function deletePart(button) {
    const title = button.dataset.title;
    const ok = await lf.confirm(`Delete “${title}”?`, "The part, every version of it and its files are deleted. This cannot be undone.", "Delete part");
    if (!ok) return;
    await lf.api("DELETE", `${V3}/parts/${button.dataset.part}`);
    lf.toast(`“${title}” was deleted.`);
    await refresh("parts");
  }

  const ACTIONS = {
    "make-build": async (button) => openBuildDialog(button),
    "slice-again": sliceAgain,
    "delete-part": deletePart,
    "cancel-slice": (button) => cancelSlice(button.dataset.job, button),
    "print-now": printNow,
    queue: addToQueue,
    remove: removeFromQueue,
    "start-next": startNext,
  };

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    const action = button && ACTIONS[button.dataset.action];
    if (!action || button.disabled) return;
    button.disabled = true;
    try {
      await action(button);
    } catch (e) {
      lf.toast(e.message, "bad");
    } finally {
      button.disabled = false;
    }
  });

  $("printers-refresh").addEventListener("click", () => refreshQuietly("printers"));

  // Printer states change on their own: the fleet's live stream says when, and the list is
  // fetched again (at most every few seconds), but not while someone is using it or a dialog is open.
  let printersStale = false;
  function refreshPrintersWhenIdle() {
    const section = $("printers");
    if (document.hidden || section.contains(document.activeElement) || document.querySelector("dialog[open]")) return;
    printersStale = false;
    refresh("printers").catch(() => {});
  }
  lf.live("/events/fleet", () => { printersStale = true; }, null);
  setInterval(() => { if (printersStale) refreshPrintersWhenIdle(); }, PRINTERS_REFRESH_MS);

  decorate(document);
})();
