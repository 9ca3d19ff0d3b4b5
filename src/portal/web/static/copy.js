// Copy buttons, as progressive enhancement: <button class="copy-button" data-copy="ID"> copies the text of
// the element #ID. Without JavaScript the buttons stay hidden (portal.css) and the values remain plain,
// selectable text.
(function () {
  "use strict";
  document.documentElement.classList.add("js-copy");

  function announce(message) {
    var status = document.getElementById("live-status");
    if (status) status.textContent = message;
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copy(text, element) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(function () { return true; }, function () { return false; });
    }
    selectText(element);
    var done = false;
    try { done = document.execCommand("copy"); } catch (error) { done = false; }
    return Promise.resolve(done);
  }

  // Delegated, so that buttons in content replaced later (refresh.js) work too.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent.trim();
    if (!button.hasAttribute("data-label")) button.setAttribute("data-label", button.textContent);
    copy(text, source).then(function (copied) {
      if (!copied) selectText(source);
      button.textContent = copied ? "Copied" : "Press Ctrl+C";
      announce(copied ? "Copied " + text : "Selected. Press Control+C or Command+C to copy.");
      window.setTimeout(function () { button.textContent = button.getAttribute("data-label"); }, 2000);
    });
  });
})();
