/*
 * "Show password" beside a password field: shows what was typed, and hides it again.
 * Without this script the button stays hidden and the form works as ever.
 * Served from /static under the pages' Content-Security-Policy (no inline
 * script).
 */
(function () {
  "use strict";
  var buttons = document.querySelectorAll("[data-show-password]");
  for (var i = 0; i < buttons.length; i++) {
    (function (button) {
      var ids = button.getAttribute("data-show-password").split(" ");
      button.hidden = false;
      button.addEventListener("click", function () {
        var show = button.getAttribute("aria-pressed") !== "true";
        for (var j = 0; j < ids.length; j++) {
          var field = document.getElementById(ids[j]);
          if (field) { field.type = show ? "text" : "password"; }
        }
        // The name stays; aria-pressed says whether the password shows.
        button.setAttribute("aria-pressed", show ? "true" : "false");
      });
    })(buttons[i]);
  }
})();
