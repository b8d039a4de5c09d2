/*
 * "Sign in with Clickpass": progressive enhancement of the partner's own
 * sign-in link. The link works without this script; the script adds the
 * mark, carries the page the person was on (as ?next=) and shows that
 * sign-in has started. It never talks to Clickpass itself and never
 * sees a password. See docs/partner-guide.md.
 */
(function () {
  "use strict";
  function enhance(link) {
    if (link.getAttribute("data-clickpass-ready")) { return; }
    link.setAttribute("data-clickpass-ready", "1");
    link.classList.add("clickpass-button");
    if (!link.querySelector(".clickpass-mark")) {
      var mark = document.createElement("span");
      mark.className = "clickpass-mark";
      mark.setAttribute("aria-hidden", "true");
      mark.textContent = "C";
      link.insertBefore(mark, link.firstChild);
    }
    if (!link.textContent.replace("C", "").trim()) {
      link.appendChild(document.createTextNode("Sign in with Clickpass"));
    }
    if (link.hasAttribute("data-clickpass-next") && link.href) {
      var url = new URL(link.href, window.location.href);
      if (!url.searchParams.has("next")) {
        url.searchParams.set("next", window.location.pathname + window.location.search);
      }
      link.href = url.toString();
    }
    link.addEventListener("click", function () {
      link.setAttribute("aria-busy", "true");
    });
  }
  function run() {
    var links = document.querySelectorAll("[data-clickpass-button]");
    for (var i = 0; i < links.length; i++) { enhance(links[i]); }
  }
  // A page restored from the back/forward cache keeps the busy state of the
  // click that left it: the person came back, so sign-in is not under way.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }
    var busy = document.querySelectorAll("[data-clickpass-button][aria-busy]");
    for (var i = 0; i < busy.length; i++) { busy[i].removeAttribute("aria-busy"); }
  });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
