// The project page, live: the conversation arrives over server-sent events (replay, then follow); the side
// sections are re-rendered by the server after new messages; the co-PI box posts a note and shows the answer
// when the addressed role's note_ack arrives in the conversation.
(function () {
  "use strict";
  const root = document.getElementById("project");
  if (!root) return;
  const project = root.dataset.project;
  const list = document.getElementById("messages");
  const live = document.getElementById("live");
  const pending = new Map(); // note id -> role it was sent to
  const answered = new Map(); // note id -> the answer line, for answers that arrive before the POST returns

  function showAnswer(id, who, text) {
    const box = document.getElementById("copi-answer");
    if (!box || !pending.has(id)) return;
    box.textContent = who + " answered: " + text;
    box.dataset.note = id;
    document.getElementById("copi-status").textContent = "";
    pending.delete(id);
  }

  let refreshing = null;
  function refreshSoon() {
    if (refreshing) return;
    refreshing = setTimeout(async function () {
      try {
        const r = await fetch("/p/" + encodeURIComponent(project) + "/sections", { credentials: "same-origin" });
        if (r.ok) document.getElementById("sections").innerHTML = await r.text();
      } finally { refreshing = null; }
    }, 700);
  }

  const events = new EventSource("/p/" + encodeURIComponent(project) + "/events");
  events.onopen = function () { live.textContent = "live"; live.classList.add("on"); };
  events.onerror = function () { live.textContent = "reconnecting…"; live.classList.remove("on"); };
  events.addEventListener("message", function (ev) {
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
    list.insertAdjacentHTML("beforeend", ev.data);
    const el = list.lastElementChild;
    if (el && el.dataset.kind === "note_ack") {
      const line = el.querySelector(".line").textContent.replace(/^re note \S+: /, "");
      answered.set(el.dataset.note, [el.dataset.sender, line]);
      showAnswer(el.dataset.note, el.dataset.sender, line);
    }
    if (atBottom) list.scrollTop = list.scrollHeight;
    refreshSoon();
  });
  // Job logs and states come from the job stream, not the conversation: look again now and then while it runs.
  setInterval(function () {
    const body = document.getElementById("sections-body");
    if (body && body.dataset.running === "yes") refreshSoon();
  }, 4000);

  async function post(form, onDone) {
    const status = document.getElementById("copi-status");
    const r = await fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" });
    let data = {};
    try { data = await r.json(); } catch (e) { data = { error: r.statusText }; }
    if (!r.ok) { status.textContent = "refused: " + (data.error || r.status); return; }
    onDone(data);
  }

  const noteForm = document.getElementById("copi-form");
  if (noteForm) noteForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    post(noteForm, function (data) {
      pending.set(data.id, data.to);
      document.getElementById("copi-status").textContent = "note " + data.id + " sent to " + data.to + "; waiting for the answer…";
      noteForm.querySelector("textarea").value = "";
      const early = answered.get(data.id);
      if (early) showAnswer(data.id, early[0], early[1]);
    });
  });
  const stopForm = document.getElementById("stop-form");
  if (stopForm) stopForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    post(stopForm, function (data) {
      pending.set(data.id, "pi");
      document.getElementById("copi-status").textContent = "stop sent to the PI (note " + data.id + ")…";
    });
  });
})();
