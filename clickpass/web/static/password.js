/*
 * "Show password" below a password field: a checkbox that shows what was
 * typed, and hides it again. Without this script the checkbox stays hidden
 * and the form works as ever. Served from /static under the pages'
 * Content-Security-Policy (no inline script).
 */
(function () {
  "use strict";
  var boxes = document.querySelectorAll("input[data-show-password]");
  for (var i = 0; i < boxes.length; i++) {
    (function (box) {
      var ids = box.getAttribute("data-show-password").split(" ");
      box.checked = false;
      box.closest(".show-password").hidden = false;
      box.addEventListener("change", function () {
        for (var j = 0; j < ids.length; j++) {
          var field = document.getElementById(ids[j]);
          if (field) { field.type = box.checked ? "text" : "password"; }
        }
      });
    })(boxes[i]);
  }
})();
