/* Sign in: check the token against /api/v1/tokens/me, keep it in this tab's sessionStorage, go back. */
"use strict";
(() => {
  const { el, json, showError, KEY } = imgq;
  const safeNext = (n) => (n && n.startsWith("/") && !n.startsWith("//") && !n.startsWith("/\\") ? n : "/");
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    try {
      const who = await json("/api/v1/tokens/me", { headers: { Authorization: "Bearer " + token }, noRedirect: true });
      sessionStorage.setItem(KEY, token);
      document.body.append(el("p", { text: `Signed in as ${who.name}` }));
      location.assign(safeNext(new URLSearchParams(location.search).get("next")));
    } catch (err) {
      showError(err.status === 401 ? "unknown or revoked token" : err);
    }
  });
})();
