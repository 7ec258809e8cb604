/* Starts the GraphQL explorer (templates/graphiql.html) on GraphiQL and React from
 * static/vendor/graphiql. The page's own session cookie authenticates the requests; GraphQL
 * over a session accepts JSON bodies only, which is what GraphiQL sends. Subscriptions go over
 * this origin's websocket (graphql-transport-ws). A shared link's ?q= and ?variables= fill the
 * editors, and edits are written back to the address bar (not ?query=: a GET with a query
 * runs it and answers JSON, as GraphQL over HTTP says). */
(function () {
  "use strict";

  var root = document.getElementById("graphiql");
  var endpoint = new URL(root.getAttribute("data-endpoint") || "/graphql", window.location.href);
  var socket = new URL(endpoint.href);
  socket.protocol = endpoint.protocol === "https:" ? "wss:" : "ws:";
  socket.hash = "";

  var parameters = new URLSearchParams(window.location.search);
  var EXAMPLE = [
    "# KubeKVM's GraphQL API: the Docs button lists it.",
    "# Ctrl-Enter runs a query. Your labs, for example:",
    "",
    "query MyLabs {",
    "  me { name role }",
    "  deployments { total items { name phase running machineCount } }",
    "}",
    "",
  ].join("\n");

  function remember(key, value) {
    if (value) {
      parameters.set(key, value);
    } else {
      parameters.delete(key);
    }
    var search = parameters.toString();
    window.history.replaceState(null, "", search ? "?" + search : window.location.pathname);
  }

  var fetcher = GraphiQL.createFetcher({ url: endpoint.href, subscriptionUrl: socket.href });

  function Explorer() {
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultQuery: EXAMPLE,
      query: parameters.get("q") || undefined,
      variables: parameters.get("variables") || undefined,
      onEditQuery: function (value) { remember("q", value); },
      onEditVariables: function (value) { remember("variables", value); },
      inputValueDeprecation: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
    });
  }

  ReactDOM.createRoot(root).render(React.createElement(Explorer));
})();
