/* Partner console: "Copy" buttons next to keys, secrets and links.
   Buttons start hidden, so a browser without this script shows none.
   What a button says after a click comes from the page, in its language
   (data-copied, data-press); English when the page does not say. */
(function () {
  "use strict";
  function copied(button, text) {
    var label = button.textContent, name = button.getAttribute("aria-label");
    button.textContent = text;
    button.setAttribute("aria-label", text);  // what a screen reader says now
    setTimeout(function () {
      button.textContent = label;
      button.setAttribute("aria-label", name);
    }, 2000);
  }
  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    button.hidden = false;
    var done = button.getAttribute("data-copied") || "Copied";
    var press = button.getAttribute("data-press") || "Press Ctrl+C";
    if (!button.getAttribute("aria-label")) {
      button.setAttribute("aria-label", "Copy " + (source.id || "").replace(/-/g, " "));
    }
    button.addEventListener("click", function () {
      var text = source.textContent.trim();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          function () { copied(button, done); },
          function () { selectText(source); copied(button, press); });
      } else {
        // Plain http (a local trial): no clipboard API; select it for the person.
        selectText(source);
        copied(button, document.execCommand && document.execCommand("copy") ? done : press);
      }
    });
  });
})();
