// steadychat web page: threads, streamed replies and the memory panel, over the REST API.
"use strict";

// Slider positions each profile sets, read from the server (GET profiles) at start; a slider
// the user moves keeps the user's value until its reset button gives it back to the profile.
const presets = new Map();
const KEY_STORAGE = "steadychat.apiKey";
const SETTINGS_STORAGE = "steadychat.generation";
const THREAD_PAGE = 100;
const TITLE_LENGTH = 60;

const ui = {};
const state = {
  threads: [],
  totalThreads: 0,
  current: null, // ThreadPublic of the selected thread
  controller: null, // AbortController of the reply being streamed
};

class ApiError extends Error {
  constructor(message, { status = 0, type = null, code = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
  }
}

// ---------------------------------------------------------------------------------------------
// DOM helpers: every piece of text goes through text nodes, never through HTML parsing.

function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  for (const [name, value] of Object.entries(options.attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function showError(error) {
  let message = error instanceof Error ? error.message : String(error);
  if (error instanceof ApiError && error.status === 401) {
    message += " Enter a valid API key in the Access section.";
  } else if (error instanceof ApiError && error.status === 409) {
    message = "A reply is already being written on this thread; try again when it has finished.";
  }
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = "";
  ui.error.hidden = true;
}

function setStatus(text) {
  ui.status.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// HTTP

function apiUrl(path) {
  // Relative to the page, so the page keeps working behind a proxy that adds a path prefix.
  return new URL(path.replace(/^\//, ""), document.baseURI).toString();
}

function authHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorFromResponse(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let type = null;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      type = body.error.type || null;
      code = body.error.code || null;
    }
  } catch {
    // Not JSON (a proxy's error page): keep the status line.
  }
  return new ApiError(message, { status: response.status, type, code });
}

async function api(path, { method = "GET", body = undefined, signal = undefined } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(apiUrl(path), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorFromResponse(response);
  if (response.status === 204) return null;
  return response.json();
}

// Server-sent events over a POST response (EventSource can only GET).
async function* readServerSentEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let eventName = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buffer += value;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        if (!match) break;
        // A lone "\r" at the end may be the first half of "\r\n" split across two chunks.
        if (match[0] === "\r" && match.index === buffer.length - 1 && !done) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (data.length) yield { event: eventName || "message", data: data.join("\n") };
          eventName = "";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon === -1 ? line : line.slice(0, colon);
          let fieldValue = colon === -1 ? "" : line.slice(colon + 1);
          if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
          if (field === "event") eventName = fieldValue;
          else if (field === "data") data.push(fieldValue);
        }
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

// ---------------------------------------------------------------------------------------------
// Threads

function threadLabel(thread) {
  return thread.title || `Thread ${thread.thread_id.slice(0, 8)}`;
}

function renderThreadList() {
  ui.threadList.replaceChildren();
  for (const thread of state.threads) {
    const selected = state.current && state.current.thread_id === thread.thread_id;
    const button = el(
      "button",
      {
        className: "thread",
        attrs: {
          type: "button",
          "data-thread-id": thread.thread_id,
          "aria-current": selected ? "true" : null,
          title: thread.thread_id,
        },
      },
      el("span", { className: "thread-title", text: threadLabel(thread) }),
      el("span", {
        className: "thread-meta",
        text: `${thread.turns} turn${thread.turns === 1 ? "" : "s"} · ${formatTime(thread.updated_at)}`,
      }),
    );
    button.addEventListener("click", () => selectThread(thread.thread_id));
    ui.threadList.append(el("li", {}, button));
  }
  if (state.totalThreads > state.threads.length) {
    const more = state.totalThreads - state.threads.length;
    ui.threadList.append(el("li", { className: "note", text: `…and ${more} older` }));
  }
  ui.threadListEmpty.hidden = state.threads.length > 0;
}

async function refreshThreads() {
  const page = await api(`threads?limit=${THREAD_PAGE}&offset=0`);
  state.threads = page.data;
  state.totalThreads = page.total;
  renderThreadList();
}

function setCurrent(thread) {
  state.current = thread;
  const has = Boolean(thread);
  ui.resetThread.disabled = !has;
  ui.deleteThread.disabled = !has;
  ui.chatTitle.textContent = has ? threadLabel(thread) : "No thread selected";
  // The selected thread lives in the address, so a reload (or a shared link) reopens it.
  const address = has
    ? `#thread=${encodeURIComponent(thread.thread_id)}`
    : location.pathname + location.search;
  history.replaceState(null, "", address);
  renderThreadList();
}

async function selectThread(threadId) {
  if (state.controller) return; // the streamed reply belongs to the thread on screen
  clearError();
  try {
    const detail = await api(`threads/${encodeURIComponent(threadId)}`);
    setCurrent(detail.thread);
    renderDetail(detail);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      setCurrent(null);
      renderDetail(null);
      await refreshThreads().catch(() => {});
    }
    showError(error);
  }
}

async function reloadCurrent() {
  if (!state.current) return;
  const detail = await api(`threads/${encodeURIComponent(state.current.thread_id)}`);
  state.current = detail.thread;
  ui.chatTitle.textContent = threadLabel(detail.thread);
  renderDetail(detail);
}

async function createThread(title = null) {
  const thread = await api("threads", { method: "POST", body: title ? { title } : {} });
  state.threads = [thread, ...state.threads.filter((t) => t.thread_id !== thread.thread_id)];
  setCurrent(thread);
  renderDetail(null);
  return thread;
}

async function onNewThread() {
  if (state.controller) return;
  clearError();
  try {
    await createThread();
    ui.message.focus();
  } catch (error) {
    showError(error);
  }
}

async function onResetThread() {
  if (!state.current || state.controller) return;
  if (!confirm(`Clear every message and memory of "${threadLabel(state.current)}"?`)) return;
  clearError();
  try {
    const thread = await api(`threads/${encodeURIComponent(state.current.thread_id)}/reset`, {
      method: "POST",
    });
    setCurrent(thread);
    await reloadCurrent();
    await refreshThreads();
    setStatus("Thread reset.");
  } catch (error) {
    showError(error);
  }
}

async function onDeleteThread() {
  if (!state.current || state.controller) return;
  if (!confirm(`Delete "${threadLabel(state.current)}" and everything it remembers?`)) return;
  clearError();
  const threadId = state.current.thread_id;
  try {
    await api(`threads/${encodeURIComponent(threadId)}`, { method: "DELETE" });
  } catch (error) {
    // Already gone is what the user asked for.
    if (!(error instanceof ApiError && error.status === 404)) {
      showError(error);
      return;
    }
  }
  state.threads = state.threads.filter((t) => t.thread_id !== threadId);
  setCurrent(null);
  renderDetail(null);
  setStatus("Thread deleted.");
  await refreshThreads().catch(showError);
}

// ---------------------------------------------------------------------------------------------
// Conversation

function messageItem(role, content, meta) {
  const item = el(
    "li",
    { className: `msg ${role}`, attrs: { "data-role": role } },
    el("div", { className: "msg-role", text: role === "user" ? "You" : "Assistant" }),
    el("div", { className: "msg-content", text: content }),
    el("div", { className: "msg-meta", text: meta || "" }),
  );
  return item;
}

function renderWindow(detail) {
  ui.messages.replaceChildren();
  if (!detail) return;
  const folded = detail.summary_l1.length > 0 || Boolean(detail.summary_l2);
  const firstTurn = detail.window.length ? detail.window[0].turn : 0;
  if (folded && firstTurn > 1) {
    ui.messages.append(
      el("li", {
        className: "note",
        text: `Turns before ${firstTurn} are kept as summaries (see Memory).`,
      }),
    );
  }
  for (const message of detail.window) {
    const meta = [`turn ${message.turn}`, formatTime(message.timestamp)].filter(Boolean);
    ui.messages.append(messageItem(message.role, message.content, meta.join(" · ")));
  }
  scrollToEnd();
}

function scrollToEnd() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function setBusy(busy) {
  ui.message.disabled = busy;
  ui.send.disabled = busy;
  ui.stop.hidden = !busy;
  ui.messages.setAttribute("aria-busy", busy ? "true" : "false");
  for (const button of [ui.newThread, ui.resetThread, ui.deleteThread]) {
    button.disabled = busy || (button !== ui.newThread && !state.current);
  }
}

function generationRequest(content) {
  return {
    content,
    stream: true,
    // Without the server's list (it failed to load) the server's default profile applies.
    profile: ui.profile.value || undefined,
    temperature: Number(ui.temperature.value),
    top_p: Number(ui.topP.value),
    max_tokens: Number(ui.maxTokens.value),
  };
}

async function sendMessage() {
  const content = ui.message.value;
  if (!content.trim() || state.controller) return;
  clearError();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  setStatus("Assistant is thinking…");
  let bubble = null;
  let sent = null;
  let saved = false;
  try {
    const thread = state.current || (await createThread(content.trim().slice(0, TITLE_LENGTH)));
    ui.message.value = "";
    sent = messageItem("user", content, "sending…");
    ui.messages.append(sent);
    bubble = messageItem("assistant", "", "");
    bubble.classList.add("streaming");
    ui.messages.append(bubble);
    scrollToEnd();
    const outcome = await streamReply(thread.thread_id, content, bubble, controller.signal);
    bubble.classList.remove("streaming");
    if (outcome.reply) {
      const { reply } = outcome;
      bubble.querySelector(".msg-content").textContent = reply.reply;
      const usage = reply.usage || {};
      bubble.querySelector(".msg-meta").textContent =
        `turn ${reply.turn} · ${reply.finish_reason} · ${usage.completion_tokens ?? "?"} tokens`;
      saved = true;
      setStatus(reply.finish_reason === "length" ? "Reply cut at the max tokens limit." : "");
      await reloadCurrent().catch(showError);
    } else {
      markFailed(sent, "Not saved.");
      markFailed(bubble, outcome.error.message);
      showError(outcome.error);
      setStatus("");
    }
  } catch (error) {
    if (error.name === "AbortError") {
      if (sent) markFailed(sent, "Not saved.");
      if (bubble) markFailed(bubble, "Stopped. This turn was not saved.");
      setStatus("Stopped.");
    } else {
      if (sent) markFailed(sent, "Not saved.");
      if (bubble) markFailed(bubble, error.message);
      showError(error);
      setStatus("");
    }
  } finally {
    state.controller = null;
    setBusy(false);
    // Nothing of a failed turn is kept, so give the text back for another try.
    if (!saved && !ui.message.value) ui.message.value = content;
    ui.message.focus();
    await refreshThreads().catch(() => {});
  }
}

function markFailed(bubble, message) {
  bubble.classList.remove("streaming");
  bubble.classList.add("failed");
  bubble.querySelector(".msg-meta").textContent = message;
}

async function streamReply(threadId, content, bubble, signal) {
  const response = await fetch(apiUrl(`threads/${encodeURIComponent(threadId)}/messages`), {
    method: "POST",
    headers: {
      Accept: "text/event-stream",
      "Content-Type": "application/json",
      ...authHeaders(),
    },
    body: JSON.stringify(generationRequest(content)),
    signal,
  });
  if (!response.ok) throw await errorFromResponse(response);
  const target = bubble.querySelector(".msg-content");
  for await (const event of readServerSentEvents(response.body)) {
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      continue; // not one of ours (a keep-alive with data); the protocol only sends JSON
    }
    if (event.event === "token") {
      if (target.childNodes.length === 0) setStatus("Writing…");
      target.append(document.createTextNode(payload.text ?? ""));
      scrollToEnd();
    } else if (event.event === "done") {
      return { reply: payload };
    } else if (event.event === "error") {
      const info = payload.error || {};
      return {
        error: new ApiError(info.message || "The reply failed.", {
          type: info.type,
          code: info.code,
        }),
      };
    }
  }
  return { error: new ApiError("The reply stream ended before the reply was complete.") };
}

function onStop() {
  if (state.controller) state.controller.abort();
}

// ---------------------------------------------------------------------------------------------
// Memory panel

function renderDetail(detail) {
  renderWindow(detail);
  renderSlots(detail ? detail.slots : {});
  renderTracking(detail);
  renderSummaries(detail);
  const account = detail ? detail.context_account : null;
  renderRecalled(account ? account.recalled || [] : []);
  renderAccount(account);
}

function renderSlots(slots) {
  const body = ui.slots.tBodies[0];
  body.replaceChildren();
  const names = Object.keys(slots || {}).sort((a, b) => {
    const la = slots[a].label || a;
    const lb = slots[b].label || b;
    return la === lb ? a.localeCompare(b) : la.localeCompare(lb);
  });
  for (const name of names) {
    const slot = slots[name];
    const history = slot.history || [];
    const earlier = history
      .map((change) => `${change.value ?? "(cleared)"} — turn ${change.turn}, ${change.source}`)
      .join("\n");
    const value = el("td", {
      className: slot.value === null ? "muted" : "",
      text: slot.value ?? "(cleared)",
      attrs: { title: slot.evidence ? `From: ${slot.evidence}` : null },
    });
    body.append(
      el(
        "tr",
        { attrs: { "data-slot": name } },
        // A memo's name is an internal key: the label says what it is, the value what it says.
        el("th", { text: slot.label || name, attrs: { scope: "row", title: name } }),
        value,
        el("td", { text: slot.turn }),
        el("td", { text: slot.source }),
        el("td", { text: history.length, attrs: { title: earlier || "No earlier values" } }),
      ),
    );
  }
  ui.slots.hidden = names.length === 0;
  ui.slotsEmpty.hidden = names.length > 0;
}

function appendTerm(list, term, value, key = null) {
  list.append(
    el("dt", { text: term }),
    el("dd", { text: value, attrs: { "data-term": key } }),
  );
}

function renderTracking(detail) {
  ui.tracking.replaceChildren();
  if (!detail) return;
  appendTerm(ui.tracking, "Topic", detail.topic || "—");
  appendTerm(ui.tracking, "Entities", detail.entities.length ? detail.entities.join(", ") : "—");
  const pending = detail.pending_questions.map((q) => `${q.text} (turn ${q.turn})`);
  appendTerm(ui.tracking, "Open questions", pending.length ? pending.join("\n") : "—", "open");
}

function renderSummaries(detail) {
  ui.summaryL1.replaceChildren();
  ui.summaryL2.replaceChildren();
  const l1 = detail ? detail.summary_l1 : [];
  for (const chunk of l1) {
    ui.summaryL1.append(
      el(
        "li",
        {},
        el("span", { className: "tag", text: `turns ${chunk.first_turn}–${chunk.last_turn}` }),
        " ",
        chunk.text,
        " ",
        el("span", { className: "muted", text: `(${chunk.method})` }),
      ),
    );
  }
  ui.summaryL1Empty.hidden = l1.length > 0;
  const l2 = detail ? detail.summary_l2 : null;
  ui.summaryL2Empty.hidden = Boolean(l2);
  if (!l2) return;
  ui.summaryL2.append(
    el("p", {
      className: "muted",
      text: `turns ${l2.first_turn}–${l2.last_turn} (${l2.method})`,
    }),
  );
  if (l2.narrative) ui.summaryL2.append(el("p", { text: l2.narrative }));
  const list = el("dl", { className: "kv" });
  const parts = [
    ["Topics", l2.topics],
    ["Facts", l2.facts],
    ["Resolved", l2.resolved],
    ["Open", l2.open_questions],
  ];
  for (const [term, values] of parts) {
    if (values && values.length) appendTerm(list, term, values.join("\n"));
  }
  ui.summaryL2.append(list);
}

function renderRecalled(snippets) {
  ui.recalled.replaceChildren();
  for (const snippet of snippets) {
    const score = typeof snippet.score === "number" ? snippet.score.toFixed(2) : "?";
    const meta = [`turn ${snippet.turn}`, snippet.role, formatTime(snippet.timestamp), `score ${score}`];
    ui.recalled.append(
      el(
        "li",
        {},
        el("div", { className: "snippet-meta", text: meta.filter(Boolean).join(" · ") }),
        el("div", { className: "snippet", text: snippet.text, attrs: { title: snippet.text } }),
      ),
    );
  }
  ui.recalledEmpty.hidden = snippets.length > 0;
}

function renderAccount(account) {
  ui.contextAccount.replaceChildren();
  ui.contextAccountEmpty.hidden = Boolean(account);
  if (!account) return;
  const budget = account.budget || 0;
  const total = account.total || 0;
  const summary = el("p", {
    className: "account-total",
    text: `Turn ${account.turn ?? "?"} · ${total} of ${budget} tokens · profile ${account.profile || "?"}`,
  });
  const bars = el("ul", { className: "bars", attrs: { "aria-label": "Tokens per section" } });
  const bar = (label, tokens, attrs) => {
    const fill = el("span", { className: "bar-fill" });
    fill.style.width = `${budget ? Math.min(100, (tokens / budget) * 100) : 0}%`;
    return el(
      "li",
      attrs,
      el("span", { className: "bar-label", text: label }),
      el("span", { className: "bar", attrs: { "aria-hidden": "true" } }, fill),
      el("span", { className: "bar-value", text: tokens }),
    );
  };
  bars.append(bar("all of budget", total, { className: "bars-total" }));
  for (const [section, tokens] of Object.entries(account.sections || {})) {
    bars.append(bar(section, tokens, { attrs: { "data-section": section } }));
  }
  const facts = el("dl", { className: "kv" });
  const dropped = account.dropped || [];
  appendTerm(facts, "Dropped", dropped.length ? dropped.join(", ") : "nothing");
  const compaction = account.compaction || {};
  let compactionText = "did not run";
  if (compaction.ran) {
    const turns = compaction.folded_turns || [];
    compactionText = `ran: folded turns ${turns.join("–") || "?"}`;
    if (compaction.method) compactionText += ` (${compaction.method})`;
    if (compaction.l2_folded) compactionText += "; L1 folded into L2";
  }
  appendTerm(facts, "Compaction", compactionText);
  if (account.usage) {
    const usage = account.usage;
    appendTerm(
      facts,
      "Usage",
      `${usage.prompt_tokens} prompt + ${usage.completion_tokens} reply = ${usage.total_tokens}`,
    );
  }
  ui.contextAccount.append(summary, bars, facts);
}

// ---------------------------------------------------------------------------------------------
// Settings

// The sliders a profile sets: the page's name, the element ids and the profile's field.
const KNOBS = [
  { key: "temperature", id: "temperature", field: "temperature", digits: 2 },
  { key: "topP", id: "top-p", field: "top_p", digits: 2 },
  { key: "maxTokens", id: "max-tokens", field: "max_new_tokens", digits: 0 },
];
// Sliders the user moved away from the profile's value: a profile change leaves them alone.
const ownValues = new Set();

function knobText(knob, value) {
  return knob.digits ? Number(value).toFixed(knob.digits) : String(Number(value));
}

function presetValue(knob) {
  const preset = presets.get(ui.profile.value);
  return preset && preset[knob.field] !== undefined ? preset[knob.field] : null;
}

function showSliderValues() {
  const profile = profileLabel(ui.profile.value || "");
  for (const knob of KNOBS) {
    const input = ui[knob.key];
    const wanted = presetValue(knob);
    // Moved back onto the profile's value: it is the profile's again.
    if (wanted !== null && knobText(knob, input.value) === knobText(knob, wanted)) {
      ownValues.delete(knob.key);
    }
    const own = ownValues.has(knob.key);
    ui[`${knob.key}Value`].textContent = knobText(knob, input.value);
    const source = ui[`${knob.key}Source`];
    const reset = ui[`${knob.key}Reset`];
    input.closest(".knob").dataset.source = own || wanted === null ? "user" : "profile";
    if (wanted === null) {
      source.textContent = "Your value.";
      reset.hidden = true;
    } else if (own) {
      source.textContent = `Your value; ${profile} sets ${knobText(knob, wanted)}.`;
      reset.textContent = `Use ${knobText(knob, wanted)}`;
      reset.hidden = false;
    } else {
      source.textContent = `Set by profile ${profile}.`;
      reset.hidden = true;
    }
  }
}

function saveSettings() {
  const settings = {
    profile: ui.profile.value,
    temperature: ui.temperature.value,
    topP: ui.topP.value,
    maxTokens: ui.maxTokens.value,
    own: [...ownValues],
  };
  localStorage.setItem(SETTINGS_STORAGE, JSON.stringify(settings));
}

function profileLabel(name) {
  return name.charAt(0).toUpperCase() + name.slice(1);
}

async function loadProfiles() {
  const profiles = await api("profiles");
  presets.clear();
  ui.profile.replaceChildren();
  for (const profile of profiles.data) {
    presets.set(profile.name, profile);
    const label = profileLabel(profile.name);
    ui.profile.append(el("option", { text: label, attrs: { value: profile.name } }));
  }
  ui.profile.value = profiles.default;
  applyPreset();
}

function applyPreset() {
  // Only the sliders the user has not moved follow the profile.
  for (const knob of KNOBS) {
    const wanted = presetValue(knob);
    if (wanted !== null && !ownValues.has(knob.key)) ui[knob.key].value = String(wanted);
  }
  showSliderValues();
}

function loadSettings() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_STORAGE) || "null");
  } catch {
    saved = null;
  }
  if (saved && presets.has(saved.profile)) {
    ui.profile.value = saved.profile;
    ownValues.clear();
    for (const knob of KNOBS) {
      const value = saved[knob.key];
      if (value === undefined) continue; // saved before this slider existed: the profile's
      // Settings saved before moved sliders were recorded: a value off the preset is the user's.
      const own = Array.isArray(saved.own)
        ? saved.own.includes(knob.key)
        : presetValue(knob) === null || knobText(knob, value) !== knobText(knob, presetValue(knob));
      if (own) {
        ownValues.add(knob.key);
        ui[knob.key].value = value;
      }
    }
    applyPreset();
  }
  showSliderValues();
}

function onProfileChange() {
  applyPreset();
  saveSettings();
}

function onSliderInput(knob) {
  ownValues.add(knob.key);
  showSliderValues();
  saveSettings();
}

function onSliderReset(knob) {
  ownValues.delete(knob.key);
  applyPreset();
  saveSettings();
  ui[knob.key].focus();
}

async function onApiKeyChange() {
  const key = ui.apiKey.value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  clearError();
  const wanted = state.current ? state.current.thread_id : threadFromHash();
  // Another key is another tenant: the thread on screen may not be theirs.
  setCurrent(null);
  renderDetail(null);
  try {
    await refreshThreads();
  } catch (error) {
    showError(error);
    return;
  }
  if (wanted && state.threads.some((t) => t.thread_id === wanted)) await selectThread(wanted);
}

function onComposerKey(event) {
  // isComposing: Enter that confirms an input-method candidate (Chinese, Japanese) must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
}

// ---------------------------------------------------------------------------------------------

function threadFromHash() {
  const match = /^#thread=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

async function start() {
  const ids = {
    threadList: "thread-list",
    threadListEmpty: "thread-list-empty",
    newThread: "new-thread",
    resetThread: "reset-thread",
    deleteThread: "delete-thread",
    profile: "profile",
    temperature: "temperature",
    temperatureValue: "temperature-value",
    topP: "top-p",
    topPValue: "top-p-value",
    maxTokens: "max-tokens",
    maxTokensValue: "max-tokens-value",
    temperatureSource: "temperature-source",
    temperatureReset: "temperature-reset",
    topPSource: "top-p-source",
    topPReset: "top-p-reset",
    maxTokensSource: "max-tokens-source",
    maxTokensReset: "max-tokens-reset",
    apiKey: "api-key",
    keyForm: "key-form",
    chatTitle: "chat-title",
    status: "status",
    error: "error",
    messages: "messages",
    composer: "composer",
    message: "message",
    send: "send",
    stop: "stop",
    slots: "slots",
    slotsEmpty: "slots-empty",
    tracking: "tracking",
    summaryL1: "summary-l1",
    summaryL1Empty: "summary-l1-empty",
    summaryL2: "summary-l2",
    summaryL2Empty: "summary-l2-empty",
    recalled: "recalled",
    recalledEmpty: "recalled-empty",
    contextAccount: "context-account",
    contextAccountEmpty: "context-account-empty",
  };
  for (const [name, id] of Object.entries(ids)) ui[name] = document.getElementById(id);

  ui.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  try {
    await loadProfiles();
  } catch (error) {
    showError(error);
  }
  loadSettings();
  renderDetail(null);

  ui.newThread.addEventListener("click", onNewThread);
  ui.resetThread.addEventListener("click", onResetThread);
  ui.deleteThread.addEventListener("click", onDeleteThread);
  ui.profile.addEventListener("change", onProfileChange);
  for (const knob of KNOBS) {
    ui[knob.key].addEventListener("input", () => onSliderInput(knob));
    ui[`${knob.key}Reset`].addEventListener("click", () => onSliderReset(knob));
  }
  ui.apiKey.addEventListener("change", onApiKeyChange);
  ui.keyForm.addEventListener("submit", (event) => event.preventDefault());
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  ui.message.addEventListener("keydown", onComposerKey);
  ui.stop.addEventListener("click", onStop);

  try {
    await refreshThreads();
  } catch (error) {
    showError(error);
  }
  const wanted = threadFromHash();
  if (wanted) await selectThread(wanted);
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
