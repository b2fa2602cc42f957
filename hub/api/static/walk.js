// The walk test page, live: each device turns green when the hub hears it triggered (server-sent events).
(function () {
  var list = document.getElementById("walk");
  if (!list || list.dataset.live !== "yes" || !window.EventSource) return;
  var source = new EventSource("/api/walk-test/events");
  source.addEventListener("triggered", function (message) {
    var data = JSON.parse(message.data);
    var card = list.querySelector('[data-device="' + CSS.escape(data.id) + '"]');
    if (!card) return;
    card.classList.remove("waiting");
    card.classList.add("passed");
    card.querySelector(".badge").textContent = "✓";
    card.querySelector(".result").textContent = data.at + (data.signal ? " · " + data.signal : "");
    if (!list.querySelector(".waiting")) document.getElementById("all-passed").hidden = false;
  });
})();
