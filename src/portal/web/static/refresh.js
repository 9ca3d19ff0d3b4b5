// Results that arrive later: an element with data-refresh="MS" and an id is fetched again from this page's
// URL every MS milliseconds and replaced, until the server renders it without data-refresh (e.g. a queued
// check has finished), at most 60 times. Elements marked data-queued are announced when they finish, and
// "pending" banners (.flash-pending) are removed then. Without JavaScript, reloading the page shows the same.
(function () {
  "use strict";
  var MAX_TRIES = 60;

  function announce(message) {
    var status = document.getElementById("live-status");
    if (status && message) status.textContent = message;
  }

  function start(element) {
    var delay = Math.max(1000, parseInt(element.getAttribute("data-refresh"), 10) || 2000);
    var tries = 0;

    function tick() {
      var current = document.getElementById(element.id);
      if (!current) return;
      var waiting = Array.prototype.map.call(current.querySelectorAll("[data-queued]"), function (node) { return node.id; });
      tries += 1;
      fetch(window.location.pathname + window.location.search, {
        headers: { accept: "text/html" }, credentials: "same-origin", cache: "no-store"
      }).then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.text();
      }).then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(element.id);
        if (!fresh) return;
        var node = document.importNode(fresh, true);
        current.replaceWith(node);
        var finished = waiting.map(function (id) {
          var card = document.getElementById(id);
          if (!card || card.hasAttribute("data-queued")) return "";
          var heading = card.querySelector("h3");
          var status = card.querySelector("[data-status]");
          return (heading ? heading.textContent.trim() + ": " : "") + (status ? status.textContent.replace(/\s+/g, " ").trim() : "");
        }).filter(Boolean);
        announce(finished.join(" "));
        if (!node.hasAttribute("data-refresh")) {
          // Everything has finished: a banner saying "checking..." is no longer true.
          Array.prototype.forEach.call(document.querySelectorAll(".flash-pending"), function (banner) { banner.remove(); });
        } else if (tries < MAX_TRIES) {
          window.setTimeout(tick, delay);
        }
      }).catch(function () { /* offline or signed out: stop; a reload shows the state */ });
    }

    window.setTimeout(tick, delay);
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-refresh][id]"), start);
})();
