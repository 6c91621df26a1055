/* Tradewarden: refresh the status of open orders without a reload (progressive: pages work without it).
   Every element with data-status-url and data-open="true" is polled; it stops once the order is final. */
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  var GIVE_UP_AFTER_MS = 10 * 60 * 1000;
  var started = Date.now();

  function tone(status) {
    if (status === "filled") { return "ok"; }
    if (["rejected", "failed", "cancelled", "expired"].indexOf(status) >= 0) { return "bad"; }
    if (status === "replaced") { return "muted"; }
    return "warn";
  }

  function setText(root, selector, text) {
    var node = root.querySelector(selector);
    if (node && text !== null && text !== undefined) { node.textContent = text; }
  }

  function showNotice(root, notice) {  // why an order is not at its broker yet, or nothing
    var node = root.querySelector(".js-notice");
    if (!node) { return; }
    if (node.hasAttribute("title")) { node.setAttribute("title", notice || ""); } else { node.textContent = notice || ""; }
    node.hidden = !notice;
  }

  function apply(root, data) {
    var badge = root.querySelector(".js-status");
    var changed = badge && badge.textContent.trim() !== data.status.replace(/_/g, " ");
    if (badge) {
      badge.textContent = data.status.replace(/_/g, " ");
      badge.className = "badge js-status " + tone(data.status);
    }
    setText(root, ".js-filled", data.filled_quantity);
    if (data.average_fill_price) { setText(root, ".js-average", data.average_fill_price); }
    showNotice(root, data.notice);
    root.setAttribute("data-open", data.open ? "true" : "false");
    if (changed && root.getAttribute("data-reload-on-change") === "true") {
      window.location.reload();  // the detail page also lists events and fills: show them
    }
  }

  function poll(root) {
    fetch(root.getAttribute("data-status-url"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok || response.redirected) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (data) { apply(root, data); })
      .catch(function () { root.setAttribute("data-open", "false"); });
  }

  function tick() {
    var open = document.querySelectorAll("[data-status-url][data-open='true']");
    open.forEach(poll);
    if (open.length && Date.now() - started < GIVE_UP_AFTER_MS) { window.setTimeout(tick, INTERVAL_MS); }
  }

  document.addEventListener("DOMContentLoaded", function () { window.setTimeout(tick, INTERVAL_MS); });
})();
