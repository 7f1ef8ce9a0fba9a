// The owner's console: keeps the live part of the page current. The server says when
// something changed (server-sent events on /events); the page then fetches the server-rendered
// /fragment and puts it in place. Everything works without this script, just not live.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource || !window.fetch) {
    return;
  }

  // Times arrive as UTC; show them in the browser's time zone.
  function localTimes(root) {
    for (const element of root.querySelectorAll("time[datetime]")) {
      const at = new Date(element.getAttribute("datetime"));
      if (!isNaN(at.getTime())) {
        element.textContent = at.toLocaleTimeString([], { hour12: false });
      }
    }
  }

  // What the owner is typing survives a refresh.
  function keepInputs(apply) {
    const kept = {};
    for (const input of live.querySelectorAll("input[type=text][name]")) {
      kept[input.id || input.name] = input.value;
    }
    const focused = document.activeElement && document.activeElement.id;
    apply();
    for (const [key, value] of Object.entries(kept)) {
      const input = document.getElementById(key) || live.querySelector(`input[name="${key}"]`);
      if (input && value) {
        input.value = value;
      }
    }
    if (focused) {
      const again = document.getElementById(focused);
      if (again) {
        again.focus();
      }
    }
  }

  let running = false;
  let again = false;
  async function refresh() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      const response = await fetch("/fragment", { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const html = await response.text();
        keepInputs(() => {
          live.innerHTML = html;
        });
        localTimes(live);
        document.body.dataset.refreshed = String(Date.now());
      } else {
        // The session ended (the daemon restarted): show the server's explanation.
        document.body.classList.add("offline");
      }
    } catch (error) {
      document.body.classList.add("offline");
    } finally {
      running = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  localTimes(document);
  const events = new EventSource("/events");
  events.addEventListener("changed", () => {
    document.body.classList.remove("offline");
    refresh();
  });
  events.addEventListener("error", () => document.body.classList.add("offline"));
})();
