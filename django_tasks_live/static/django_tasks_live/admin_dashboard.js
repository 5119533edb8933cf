/* The dashboard refreshes its body every data-tl-refresh seconds (served from the
 * server's shared figures), and not at all while the browser tab is hidden. */
(function () {
  "use strict";
  var box = document.getElementById("tl-dashboard");
  if (!box) return;
  var seconds = parseFloat(box.getAttribute("data-tl-refresh")) || 5;
  function refresh() {
    if (document.hidden) return;
    fetch(window.location.pathname + "?fragment=1", {credentials: "same-origin"})
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) { if (html !== null) box.innerHTML = html; })
      .catch(function () {});
  }
  setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", refresh);
})();
