// The API reference page: Swagger UI over the server's own OpenAPI document (no inline script: CSP 'self').
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: false,
  });
})();
