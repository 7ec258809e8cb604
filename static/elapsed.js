// Keeps the pages' "creating for 4 min" clocks going between live updates: a machine stuck in
// a step sends no change, so without this its elapsed time would stand still. Each
// <time class="elapsed" data-seconds="N"> counts on from when it was drawn (a live update
// replaces it with a fresh one), written as kubekvm.progress.elapsed writes it; its status
// element gets the class "slow" and shows its "unusually long" note once it passes
// data-slow-after. Without JavaScript the server's text stands.
(function () {
  "use strict";
  var drawn = new WeakMap();

  function elapsed(seconds) {
    var whole = Math.max(0, Math.floor(seconds));
    if (whole < 60) return whole + " s";
    if (whole < 3600) return Math.floor(whole / 60) + " min";
    if (whole < 86400) {
      var minutes = Math.floor(whole / 60);
      var hours = Math.floor(minutes / 60);
      minutes = minutes % 60;
      return minutes ? hours + " h " + minutes + " min" : hours + " h";
    }
    return Math.floor(whole / 86400) + " d";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("time.elapsed[data-seconds]").forEach(function (clock) {
      if (!drawn.has(clock)) drawn.set(clock, now);
      var seconds = Number(clock.dataset.seconds) + (now - drawn.get(clock)) / 1000;
      var text = elapsed(seconds);
      if (clock.textContent !== text) clock.textContent = text;
      var status = clock.closest("[data-slow-after]");
      if (status && seconds > Number(status.dataset.slowAfter) && !status.classList.contains("slow")) {
        status.classList.add("slow");
        var note = status.querySelector(".slow-note");
        if (note) note.hidden = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", tick);
  setInterval(tick, 1000);
})();
