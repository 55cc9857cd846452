// Small progressive enhancements: copy buttons, "use in playground", confirmations.
// Everything works without this file except copying to the clipboard.
"use strict";
(() => {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    const copyFrom = button.dataset.copyFrom;
    if (copyFrom) {
      const text = document.getElementById(copyFrom).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(document.getElementById(copyFrom));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    }
    const keyFrom = button.dataset.playgroundKeyFrom;
    if (keyFrom) {
      sessionStorage.setItem("porten.playground.key", document.getElementById(keyFrom).textContent);
      location.assign("/build/playground");
    }
  });
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
})();
