// Sends the per-server token with every same-origin request that can change state (anything but GET/HEAD).
// The server injects the token into this page's <meta name="mechscope-token">; other web pages cannot read it,
// so they cannot make such requests. Loaded before app.js, which then uses window.fetch as usual.
(() => {
  "use strict";
  const meta = document.querySelector('meta[name="mechscope-token"]');
  const token = meta ? meta.getAttribute("content") : "";
  const plainFetch = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const req = input instanceof Request ? input : null;
    const method = String((init && init.method) || (req && req.method) || "GET").toUpperCase();
    const url = new URL(req ? req.url : String(input), window.location.href);
    if (token && url.origin === window.location.origin && method !== "GET" && method !== "HEAD") {
      const headers = new Headers((init && init.headers) || (req && req.headers) || undefined);
      headers.set("X-Mechscope-Token", token);
      return plainFetch(input, { ...init, headers });
    }
    return plainFetch(input, init);
  };
})();
