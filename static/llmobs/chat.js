// The employee chat: streams answers from POST /api/chat (Server-Sent Events over fetch),
// keeps each conversation in sessionStorage, and sends thumbs/regenerate to the feedback API.
(function () {
  "use strict";
  const root = document.querySelector("[data-chat-api]");
  if (!root) return;
  const api = root.dataset.chatApi;
  const feedbackApi = root.dataset.feedbackApi;
  const log = document.getElementById("chat-log");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const send = document.getElementById("chat-send");
  const routeSelect = document.getElementById("chat-route");
  const errorBox = document.getElementById("chat-error");
  const history = document.getElementById("chat-history");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const STORE = "llmobs-chat";

  let store = JSON.parse(sessionStorage.getItem(STORE) || '{"current": null, "conversations": {}}');
  const save = () => sessionStorage.setItem(STORE, JSON.stringify(store));
  const newId = () => "chat-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);

  function conversation() {
    if (!store.current || !store.conversations[store.current]) {
      store.current = newId();
      store.conversations[store.current] = { route: routeSelect.value, turns: [], started: new Date().toISOString() };
      save();
    }
    return store.conversations[store.current];
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function metaText(turn) {
    if (!turn.usage) return "";
    const u = turn.usage;
    const cost = turn.cost === null ? "not priced" : Number(turn.cost).toFixed(6) + " " + turn.currency;
    return `${turn.model} · ${u.input_tokens} in / ${u.output_tokens} out tokens · ${cost}`;
  }

  function feedback(turn, body, button) {
    if (!feedbackApi || !turn.event_id) return Promise.resolve();
    return fetch(feedbackApi, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      credentials: "same-origin",
      body: JSON.stringify(Object.assign({ event_id: turn.event_id }, body)),
    }).then((r) => {
      if (button) button.setAttribute("aria-pressed", r.ok ? "true" : "false");
      if (!r.ok) showError("Your feedback could not be saved.");
    });
  }

  function renderTurn(turn, index, convo) {
    const user = document.createElement("li");
    user.className = "msg msg-user";
    user.textContent = turn.prompt;
    log.appendChild(user);
    const bot = document.createElement("li");
    bot.className = "msg msg-assistant";
    const text = document.createElement("div");
    text.className = "msg-text";
    text.textContent = turn.answer || "";
    bot.appendChild(text);
    const meta = document.createElement("p");
    meta.className = "msg-meta";
    meta.textContent = metaText(turn);
    bot.appendChild(meta);
    if (turn.event_id) {
      const actions = document.createElement("div");
      actions.className = "msg-actions";
      if (feedbackApi) {
        // Marks from the basic fonts (DejaVu has them; emoji fonts are often absent on servers
        // and locked-down desktops, where 👍 shows as a box). The label is what is announced.
        for (const [mark, label, value] of [["✓", "Helpful", "up"], ["✗", "Not helpful", "down"]]) {
          const b = document.createElement("button");
          b.type = "button";
          b.className = "btn btn-small";
          b.textContent = `${mark} ${label}`;
          b.setAttribute("aria-label", label);
          b.setAttribute("aria-pressed", "false");
          b.addEventListener("click", () => feedback(turn, { thumbs: value }, b));
          actions.appendChild(b);
        }
      }
      if (index === convo.turns.length - 1) {
        const again = document.createElement("button");
        again.type = "button";
        again.className = "btn btn-small";
        again.textContent = "↻ Regenerate";
        again.addEventListener("click", () => regenerate());
        actions.appendChild(again);
      }
      bot.appendChild(actions);
    }
    log.appendChild(bot);
    return { text, meta };
  }

  function render() {
    const convo = conversation();
    log.innerHTML = "";
    convo.turns.forEach((t, i) => renderTurn(t, i, convo));
    history.innerHTML = "";
    Object.entries(store.conversations).reverse().forEach(([id, c]) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "link-button";
      b.textContent = (c.turns[0] ? c.turns[0].prompt.slice(0, 40) : "(empty)") + " · " + c.route;
      if (id === store.current) b.setAttribute("aria-current", "true");
      b.addEventListener("click", () => { store.current = id; routeSelect.value = c.route; save(); render(); });
      li.appendChild(b);
      history.appendChild(li);
    });
  }

  function messagesFor(convo, upto) {
    const messages = [];
    convo.turns.slice(0, upto).forEach((t) => {
      messages.push({ role: "user", content: t.prompt });
      if (t.answer) messages.push({ role: "assistant", content: t.answer });
    });
    return messages;
  }

  async function ask(prompt) {
    showError("");
    const convo = conversation();
    convo.route = routeSelect.value;
    const turn = { prompt, answer: "" };
    convo.turns.push(turn);
    save();
    render();
    const nodes = { text: log.querySelector(".msg-assistant:last-child .msg-text"), meta: log.querySelector(".msg-assistant:last-child .msg-meta") };
    nodes.meta.textContent = "Thinking…";
    send.disabled = true;
    const messages = messagesFor(convo, convo.turns.length - 1).concat([{ role: "user", content: prompt }]);
    try {
      const response = await fetch(api, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "text/event-stream" },
        credentials: "same-origin",
        body: JSON.stringify({ route: convo.route, messages, session_id: store.current, stream: true }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || `The chat failed (HTTP ${response.status}).`);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const name = (block.match(/^event: (.*)$/m) || [])[1];
          const data = JSON.parse((block.match(/^data: (.*)$/m) || [, "{}"])[1]);
          if (name === "delta") {
            turn.answer += data.content;
            nodes.text.textContent = turn.answer;
          } else if (name === "done") {
            Object.assign(turn, { event_id: data.event_id, usage: data.usage, cost: data.cost, currency: data.currency, model: data.model });
          } else if (name === "error") {
            throw new Error((data.error && data.error.message) || "The model call failed.");
          }
        }
      }
    } catch (err) {
      showError(err.message);
      if (!turn.answer) convo.turns.pop();
    } finally {
      send.disabled = false;
      save();
      render();
    }
  }

  function regenerate() {
    const convo = conversation();
    const last = convo.turns.pop();
    if (!last) return;
    save();
    feedback(last, { signals: ["regenerated"] });
    ask(last.prompt);
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const prompt = input.value.trim();
    if (!prompt) return;
    input.value = "";
    ask(prompt);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  document.getElementById("chat-new").addEventListener("click", () => {
    store.current = null;
    conversation();
    render();
    input.focus();
  });
  const current = store.conversations[store.current];
  if (current) routeSelect.value = current.route;
  render();
})();
