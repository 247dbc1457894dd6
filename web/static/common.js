// runnel editor: shared helpers (admin token, API calls, DOM building).
"use strict";

const Runnel = (() => {
  const TOKEN_KEY = "runnel.token";
  let waiting = [];

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // Shows the token form once; resolves when a token has been entered.
  function askToken() {
    const box = document.getElementById("token-box");
    box.hidden = false;
    document.getElementById("token-input").focus();
    return new Promise((resolve) => waiting.push(resolve));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("token-form");
    if (!form) return;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value);
      document.getElementById("token-box").hidden = true;
      const resolve = waiting;
      waiting = [];
      resolve.forEach((r) => r());
    });
  });

  // fetch() with the admin token; asks for the token on 401 and retries.
  async function api(path, options = {}) {
    for (;;) {
      const headers = Object.assign({}, options.headers || {});
      if (token()) headers["Authorization"] = "Bearer " + token();
      const response = await fetch(path, Object.assign({}, options, { headers }));
      if (response.status !== 401) return response;
      await askToken();
    }
  }

  async function apiJson(path, options) {
    const response = await api(path, options);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { ok: response.ok, status: response.status, body, response };
  }

  // el("div", {class: "x", onclick: f}, child, "text", ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function wsUrl(path) {
    const url = new URL(path, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (token()) url.searchParams.set("token", token());
    return url.toString();
  }

  function fmtNumber(n) {
    if (n === undefined || n === null) return "";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return String(Math.round(n));
  }

  return { api, apiJson, askToken, token, el, svg, wsUrl, fmtNumber };
})();
