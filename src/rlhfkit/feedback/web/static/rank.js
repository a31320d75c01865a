// The ranking screen: keyboard first, mouse too. Completion texts are never read or written here
// as HTML: this script only sets textContent, classes and attributes (the page's CSP forbids
// inline scripts, so even a slip in escaping could not run anything).
"use strict";

(function () {
  const form = document.getElementById("ranking");
  if (!form) return;
  const cards = Array.from(form.querySelectorAll(".card"));
  const K = cards.length;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const message = document.getElementById("message");
  const help = document.getElementById("help");
  const ids = cards.map((card) => card.dataset.cid);
  const letters = cards.map((card) => card.dataset.letter.toLowerCase());
  const COMMANDS = new Set(["f", "s", "u", "x", "n"]); // these keys never pick a reply

  let marks = {}; // completion id → 1..K or "F"
  let reasons = {}; // completion id → why it fails
  // A correction (data-supersedes: the ranking it amends) starts from the labeler's marks of then.
  const supersedes = form.dataset.supersedes;
  cards.forEach((card, i) => {
    if (card.dataset.was === undefined) return;
    marks[ids[i]] = card.dataset.was === "F" ? "F" : Number(card.dataset.was);
    if (card.dataset.reason) reasons[ids[i]] = card.dataset.reason;
  });
  let selected = 0;
  let busy = false;
  const undoStack = [];

  function say(text, isError) {
    message.textContent = text;
    message.classList.toggle("error", Boolean(isError));
  }

  function render() {
    const uses = {};
    Object.values(marks).forEach((m) => { if (m !== "F") uses[m] = (uses[m] || 0) + 1; });
    cards.forEach((card, i) => {
      const m = marks[ids[i]];
      card.classList.toggle("selected", i === selected);
      card.classList.toggle("marked", m !== undefined && m !== "F");
      card.classList.toggle("failed", m === "F");
      card.querySelector(".mark").textContent =
        m === undefined ? "not ranked" : m === "F" ? "F · fail" : "rank " + m + (uses[m] > 1 ? " · tie" : "");
      card.querySelectorAll("[data-mark]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.mark === String(m))));
      const box = card.querySelector(".reason");
      box.hidden = m !== "F";
      const input = box.querySelector("input");
      if (input.value !== (reasons[ids[i]] || "")) input.value = reasons[ids[i]] || "";
    });
  }

  function pick(i) {
    selected = (i + K) % K;
    render();
    cards[selected].scrollIntoView({ block: "nearest" });
  }

  function nextUnmarked(from) {
    for (let d = 1; d <= K; d++) {
      const j = (from + d) % K;
      if (marks[ids[j]] === undefined) return j;
    }
    return from;
  }

  function mark(i, m) {
    undoStack.push({ marks: { ...marks }, reasons: { ...reasons }, selected });
    marks[ids[i]] = m;
    if (m !== "F") delete reasons[ids[i]];
    selected = i;
    if (m === "F") {
      render();
      cards[i].querySelector(".reason input").focus();
      say("Why does reply " + letters[i].toUpperCase() + " fail? Type a reason, then Enter.");
      return;
    }
    say("");
    pick(nextUnmarked(i));
  }

  function undo() {
    const last = undoStack.pop();
    if (!last) return say("Nothing to undo.");
    ({ marks, reasons, selected } = last);
    if (document.activeElement && document.activeElement.closest(".reason")) document.activeElement.blur();
    say("");
    render();
  }

  function toggleHelp(show) {
    help.hidden = show === undefined ? !help.hidden : !show;
  }

  async function post(path, body) {
    // → null when done, else the server's reason (a network failure included).
    try {
      const response = await fetch(path, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      if (response.ok) return null;
      try { return (await response.json()).detail || "error " + response.status; } catch (e) { return "error " + response.status; }
    } catch (e) {
      return "Could not reach the server; your marks are still here. Try again.";
    }
  }

  async function skip() {
    if (busy) return;
    busy = true;
    say("Skipping…");
    const error = await post("/api/skip", { task_id: Number(form.dataset.task) });
    if (error === null) return window.location.assign("/rank");
    say(error, true);
    busy = false;
  }

  async function submit() {
    if (busy) return;
    const unranked = ids.findIndex((id) => marks[id] === undefined);
    if (unranked >= 0) {
      pick(unranked);
      return say("Reply " + letters[unranked].toUpperCase() + " has no rank yet.", true);
    }
    const noReason = ids.findIndex((id) => marks[id] === "F" && !(reasons[id] || "").trim());
    if (noReason >= 0) {
      pick(noReason);
      cards[noReason].querySelector(".reason input").focus();
      return say("Reply " + letters[noReason].toUpperCase() + " is marked F: give a reason.", true);
    }
    const failReasons = {};
    ids.forEach((id) => { if (marks[id] === "F") failReasons[id] = reasons[id].trim(); });
    busy = true;
    say("Saving…");
    const body = {
      marks, fail_reasons: failReasons,
      comment: form.elements.comment.value, checked_facts: form.elements.checked_facts.checked,
    };
    const error = supersedes
      ? await post("/api/rankings/" + Number(supersedes) + "/corrections", body)
      : await post("/api/rankings", { task_id: Number(form.dataset.task), ...body });
    if (error === null) return window.location.assign(supersedes ? "/history" : "/rank");
    say(error, true);
    busy = false;
  }

  cards.forEach((card, i) => {
    card.addEventListener("click", (e) => { if (!e.target.closest("button, input, label")) pick(i); });
    card.querySelectorAll("[data-mark]").forEach((b) =>
      b.addEventListener("click", () => mark(i, b.dataset.mark === "F" ? "F" : Number(b.dataset.mark))));
    const input = card.querySelector(".reason input");
    input.addEventListener("input", () => { reasons[ids[i]] = input.value; });
    input.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Enter") {
        e.preventDefault();
        if (!input.value.trim()) return say("A short reason, please (e.g. repetitive).", true);
        input.blur();
        say("");
        pick(nextUnmarked(i));
      } else if (e.key === "Escape") {
        e.preventDefault();
        undo();
      }
    });
  });

  form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  document.querySelectorAll('[data-action="skip"]').forEach((b) => b.addEventListener("click", skip));
  document.querySelectorAll('[data-action="undo"]').forEach((b) => b.addEventListener("click", undo));
  document.querySelectorAll('[data-action="help"]').forEach((b) => b.addEventListener("click", () => toggleHelp()));

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const target = e.target;
    if (target.matches("textarea, input[type=text], input[type=number]")) {
      if (e.key === "Escape") target.blur();
      return; // typing, not a command
    }
    if (target.matches("button, a, input[type=checkbox]") && (e.key === "Enter" || e.key === " ")) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (key === "?") toggleHelp();
    else if (key === "Escape") toggleHelp(false);
    else if (!help.hidden) return;
    else if (key === "ArrowDown" || key === "ArrowRight") pick(selected + 1);
    else if (key === "ArrowUp" || key === "ArrowLeft") pick(selected - 1);
    else if (/^[1-9]$/.test(key) && Number(key) <= K) mark(selected, Number(key));
    else if (key === "f") mark(selected, "F");
    else if (key === "s") { if (!supersedes) skip(); }
    else if (key === "u") undo();
    else if (key === "x") form.elements.checked_facts.click();
    else if (key === "n") form.elements.comment.focus();
    else if (key === "Enter") submit();
    else if (!COMMANDS.has(key) && letters.includes(key)) pick(letters.indexOf(key));
    else return;
    e.preventDefault();
  });

  render();
})();
