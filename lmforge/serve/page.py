"""The chat page served at `/`: one self-contained HTML file (inline CSS and JS, no network but this server).

It streams replies from /v1/chat/completions, keeps the conversation (multi-turn), has a stop button,
temperature and max-tokens fields, a reset, and an API-key field (sent as "Authorization: Bearer"; kept in the
tab's sessionStorage only). Model output is put on the page with `textContent`, never parsed as HTML.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lmforge chat</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d1f23; }
  header { display: flex; flex-wrap: wrap; gap: .6em; align-items: center; padding: .6em 1em; background: #fff;
           border-bottom: 1px solid #dde; }
  header b { margin-right: auto; }
  header label { font-size: 13px; color: #555; }
  header input { width: 5em; }
  header input#key { width: 11em; }
  #log { max-width: 52em; margin: 0 auto; padding: 1em; }
  .msg { white-space: pre-wrap; padding: .55em .8em; margin: .45em 0; border-radius: 8px; }
  .user { background: #dceaff; margin-left: 15%; }
  .assistant { background: #fff; border: 1px solid #e2e4ea; margin-right: 15%; }
  .error { background: #ffe3e3; color: #8a1111; border: 1px solid #f3b5b5; }
  form { max-width: 52em; margin: 0 auto; display: flex; gap: .5em; padding: 0 1em 1.5em; }
  textarea { flex: 1; font: inherit; padding: .5em; min-height: 3em; }
  button { font: inherit; padding: .4em 1em; }
</style>
</head>
<body>
<header>
  <b>lmforge chat &middot; <span id="model">...</span></b>
  <label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.7"></label>
  <label>max tokens <input id="max_tokens" type="number" min="1" step="1" value="256"></label>
  <label>API key <input id="key" type="password" autocomplete="off" placeholder="(if the server has one)"></label>
  <button id="reset" type="button">Reset</button>
</header>
<div id="log"></div>
<form id="form">
  <textarea id="input" placeholder="Type a message; Enter sends, Shift+Enter for a new line"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log");
let history = [];
let controller = null;
let modelName = null;
$("key").value = sessionStorage.getItem("lmforge-key") || "";
$("key").addEventListener("change", () => { sessionStorage.setItem("lmforge-key", $("key").value); loadModel(); });

function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
function add(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;          // text, never HTML
  log.appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}
async function errorText(resp) {
  try { const body = await resp.json(); return "error " + resp.status + ": " + body.error.message; }
  catch (e) { return "error " + resp.status; }
}
async function loadModel() {
  try {
    const resp = await fetch("/v1/models", {headers: headers()});
    if (!resp.ok) { $("model").textContent = "?"; add("error", await errorText(resp)); return; }
    modelName = (await resp.json()).data[0].id;
    $("model").textContent = modelName;
  } catch (e) { add("error", "cannot reach the server: " + e); }
}
async function send(text) {
  if (!modelName) await loadModel();
  if (!modelName) return;
  history.push({role: "user", content: text});
  add("user", text);
  const out = add("assistant", "");
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  let reply = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({model: modelName, messages: history, stream: true,
                            temperature: parseFloat($("temperature").value),
                            max_tokens: parseInt($("max_tokens").value, 10)})});
    if (!resp.ok) throw new Error(await errorText(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error("error: " + chunk.error.message);
        for (const c of chunk.choices) {
          if (c.delta && c.delta.content) { reply += c.delta.content; out.textContent = reply; }
        }
      }
    }
    history.push({role: "assistant", content: reply});
  } catch (e) {
    if (e.name === "AbortError") { history.push({role: "assistant", content: reply}); out.textContent = reply + " [stopped]"; }
    else { history.pop(); out.remove(); add("error", String(e.message || e)); }
  } finally {
    controller = null;
    $("send").disabled = false; $("stop").disabled = true;
  }
}
$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("form").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("reset").addEventListener("click", () => { if (controller) controller.abort(); history = []; log.textContent = ""; });
loadModel();
</script>
</body>
</html>
"""
