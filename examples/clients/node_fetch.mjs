// An app using Node's built-in fetch, unchanged: the environment decides how it reaches the API.
//
//   # Route mode (base URL): any Node version, no CA needed.
//   OPENAI_BASE_URL=http://127.0.0.1:8080/openai/v1 node node_fetch.mjs
//
//   # Proxy mode against the real API: Node honours HTTP(S)_PROXY only with
//   # NODE_USE_ENV_PROXY=1 (Node >= 22.21 or >= 24.5; older versions ignore it and connect
//   # directly), and trusts extra CAs from NODE_EXTRA_CA_CERTS.
//   NODE_USE_ENV_PROXY=1 HTTPS_PROXY=http://127.0.0.1:8080 \
//     NODE_EXTRA_CA_CERTS=$PWD/certs/ca.crt node node_fetch.mjs
//
// No API key is needed in the app: the proxy injects one from its pool.

const base = process.env.OPENAI_BASE_URL ?? "https://api.openai.com/v1";
const headers = { "content-type": "application/json" };
if (process.env.OPENAI_API_KEY) headers.authorization = `Bearer ${process.env.OPENAI_API_KEY}`;

const res = await fetch(`${base}/chat/completions`, {
  method: "POST",
  headers,
  body: JSON.stringify({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Say hello" }],
    max_tokens: 20,
  }),
});
const body = await res.json();
console.log("status:", res.status, "key:", res.headers.get("x-quota-proxy-key"),
  "delayed ms:", res.headers.get("x-quota-proxy-delayed-ms"));
if (res.ok) {
  console.log("reply:", body.choices[0].message.content);
} else {
  // The proxy's own 429 has OpenAI's error shape and a Retry-After header.
  console.log("error:", body.error?.message, "retry-after:", res.headers.get("retry-after"));
}
