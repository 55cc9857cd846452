// The playground: stream a chat from /v1/chat/completions and, while a cold model loads,
// draw its progress from the public warm-up stream. Text only ever goes in via textContent.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("chat-form");
  if (!form) return;
  const KEY_SLOT = "porten.playground.key";
  const PHASES = {
    cold: "waiting for a node",
    queued: "queued on a node",
    downloading: "downloading",
    loading: "loading into memory",
    ready: "ready",
  };
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem(KEY_SLOT) || "";
  let running = null;

  function requestBody() {
    return {
      model: $("model").value,
      messages: [{ role: "user", content: $("prompt").value }],
      stream: true,
      stream_options: { include_usage: true },
    };
  }

  function curlCommand(body) {
    const json = JSON.stringify(body).replace(/'/g, "'\\''");
    return `curl ${location.origin}/v1/chat/completions \\\n` +
      `  -H "Authorization: Bearer $PORTEN_API_KEY" \\\n` +
      `  -H "Content-Type: application/json" \\\n` +
      `  -d '${json}'`;
  }

  function refreshCurl() { $("curl").textContent = curlCommand(requestBody()); }

  function say(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = kind || "";
  }

  function logPhase(w) {
    const log = $("warm-log");
    let last = log.lastElementChild;
    if (!last || last.dataset.phase !== w.phase) {
      last = document.createElement("li");
      last.dataset.phase = w.phase;
      log.appendChild(last);
    }
    const detail = w.phase === "downloading" ? ` ${w.pct}% (${w.done_mb} / ${w.total_mb} MB)` : "";
    last.textContent = PHASES[w.phase] + detail;
  }

  function showWarming(w) {
    $("warming").hidden = false;
    const bar = $("warm-bar");
    bar.dataset.phase = w.phase;
    if (w.phase === "downloading") {
      bar.value = w.pct;
      $("warm-detail").textContent = `${w.done_mb} of ${w.total_mb} MB (${w.pct}%)`;
    } else if (w.phase === "loading") {
      bar.removeAttribute("value"); // indeterminate: loading into memory has no byte count
      $("warm-detail").textContent = "";
    } else if (w.ready) {
      bar.value = 100;
      $("warm-detail").textContent = "";
    } else {
      bar.value = 0;
      $("warm-detail").textContent = "";
    }
    $("warm-phase").textContent = PHASES[w.phase] || w.phase;
    logPhase(w);
  }

  // Follow the model's warm-up until it is ready; returns a function that stops following.
  function followWarming(model) {
    const url = `/public/v1/models/warming/stream?model=${encodeURIComponent(model)}`;
    const source = new EventSource(url);
    source.onmessage = (event) => {
      const w = JSON.parse(event.data);
      showWarming(w);
      if (w.ready) source.close();
    };
    source.onerror = () => source.close(); // the stream ends at ready; never reconnect
    return () => source.close();
  }

  function showUsage(u) {
    $("usage").textContent =
      `${u.prompt_tokens} prompt + ${u.completion_tokens} completion = ${u.total_tokens} tokens`;
  }

  async function readStream(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
          if (delta.reasoning_content) {
            $("reasoning").hidden = false;
            $("reasoning").textContent += delta.reasoning_content;
          }
          if (delta.content) $("answer").textContent += delta.content;
          if (chunk.usage) showUsage(chunk.usage);
        }
      }
    }
  }

  async function send(event) {
    event.preventDefault();
    const key = keyInput.value.trim();
    sessionStorage.setItem(KEY_SLOT, key);
    const body = requestBody();
    refreshCurl();
    $("answer").textContent = "";
    $("reasoning").textContent = "";
    $("reasoning").hidden = true;
    $("served-by").textContent = "—";
    $("usage").textContent = "—";
    $("warm-log").textContent = "";
    $("warming").hidden = true;
    const option = $("model").selectedOptions[0];
    const stopFollowing = option && option.dataset.ready === "true" ? () => {} : followWarming(body.model);
    const controller = new AbortController();
    running = controller;
    $("send").disabled = true;
    $("stop").disabled = false;
    say("Sending…");
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Authorization": `Bearer ${key}`, "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      $("served-by").textContent = response.headers.get("X-Porten-Node") || "—";
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
        say(message, "error");
        return;
      }
      say("Streaming…");
      await readStream(response);
      say("Done.", "ok");
      if (option) option.dataset.ready = "true";
    } catch (err) {
      say(controller.signal.aborted ? "Stopped." : `Failed: ${err.message}`, "error");
    } finally {
      stopFollowing();
      running = null;
      $("send").disabled = false;
      $("stop").disabled = true;
    }
  }

  form.addEventListener("submit", send);
  form.addEventListener("input", refreshCurl);
  $("stop").addEventListener("click", () => running && running.abort());
  $("copy-curl").addEventListener("click", async () => {
    refreshCurl();
    try {
      await navigator.clipboard.writeText($("curl").textContent);
      say("The curl command is on the clipboard.", "ok");
    } catch (_) {
      say("Select the command below and copy it.", "");
    }
  });
  refreshCurl();
})();
