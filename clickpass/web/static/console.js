/* Partner console: "Copy" buttons next to keys, secrets and links.
   Buttons start hidden, so a browser without this script shows none. */
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
    button.setAttribute("aria-label", "Copy " + (source.id || "").replace(/-/g, " "));
    button.addEventListener("click", function () {
      var text = source.textContent.trim();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          function () { copied(button, "Copied"); },
          function () { selectText(source); copied(button, "Press Ctrl+C"); });
      } else {
        // Plain http (a local trial): no clipboard API; select it for the person.
        selectText(source);
        copied(button, document.execCommand && document.execCommand("copy") ? "Copied" : "Press Ctrl+C");
      }
    });
  });
})();
