// Live chat: sends a message, shows the reply as it streams (JSON lines), thumbs per reply.
(function () {
  const chat = document.getElementById("chat");
  const form = document.getElementById("chat-form");
  const box = document.getElementById("message");
  const errors = document.getElementById("chat-error");
  const taskId = chat.dataset.task;
  let sessionId = null;

  function showError(text) { errors.textContent = text; errors.hidden = !text; }

  function addMessage(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const label = document.createElement("div");
    label.className = "role";
    label.textContent = role;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    div.append(label, body);
    chat.append(div);
    return div;
  }

  async function api(path, body) {
    const response = await fetch(path, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body || {}), credentials: "same-origin",
    });
    return response;
  }

  function addVotes(div, messageId) {
    const votes = document.createElement("span");
    votes.className = "votes";
    for (const [vote, label] of [["up", "👍"], ["down", "👎"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.className = "vote-" + vote;
      button.onclick = async () => {
        const response = await api("/api/chat-messages/" + messageId + "/vote", {vote: vote});
        const data = await response.json();
        if (!response.ok) { showError(data.error); return; }
        votes.textContent = "voted " + vote;
      };
      votes.append(button);
    }
    div.querySelector(".role").append(votes);
  }

  async function send(text) {
    showError("");
    if (sessionId === null) {
      const response = await api("/api/tasks/" + taskId + "/chats");
      const data = await response.json();
      if (!response.ok) { showError(data.error); return; }
      sessionId = data.session_id;
    }
    addMessage("user", text);
    const reply = addMessage("assistant", "");
    const body = reply.querySelector(".text");
    const response = await api("/api/chats/" + sessionId + "/messages", {content: text});
    if (!response.ok) { showError((await response.json()).error); return; }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const event = JSON.parse(buffer.slice(0, end));
        buffer = buffer.slice(end + 1);
        if (event.delta) body.textContent += event.delta;
        if (event.error) showError(event.error);
        if (event.done) { body.textContent = event.content; addVotes(reply, event.message_id); }
      }
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = box.value.trim();
    if (!text) return;
    box.value = "";
    send(text).catch((err) => showError(String(err)));
  });
  document.getElementById("new-chat").onclick = () => { sessionId = null; chat.replaceChildren(); showError(""); };
})();
