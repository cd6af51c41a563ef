"""An app using the OpenAI SDK, unchanged: the environment decides how it reaches the API.

    pip install openai

    # Route mode (base URL): no CA needed.
    OPENAI_BASE_URL=http://127.0.0.1:8080/openai/v1 OPENAI_API_KEY=unused python3 python_openai.py

    # Proxy mode against the real API: HTTPS through the proxy, trusting its CA.
    HTTPS_PROXY=http://127.0.0.1:8080 SSL_CERT_FILE=$PWD/ca-bundle.pem \
        OPENAI_API_KEY=unused python3 python_openai.py

The SDK needs some OPENAI_API_KEY; the proxy replaces it with a key from its pool.
"""

from openai import OpenAI

client = OpenAI()  # reads OPENAI_API_KEY, OPENAI_BASE_URL; httpx reads HTTP(S)_PROXY, SSL_CERT_FILE

# A plain call. The raw response shows which pool key the proxy used (by id, never its value).
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
    max_tokens=20,
)
completion = raw.parse()
print("key:", raw.headers.get("x-quota-proxy-key"), "delayed ms:", raw.headers.get("x-quota-proxy-delayed-ms"))
print("reply:", completion.choices[0].message.content)
print("usage:", completion.usage.prompt_tokens, "in,", completion.usage.completion_tokens, "out")

# Streaming: the proxy counts the streamed tokens without buffering the stream.
stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
    stream=True,
)
print("streamed:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))
