// An app using Go's net/http, unchanged: the environment decides how it reaches the API.
//
//	# Route mode (base URL): no CA needed.
//	OPENAI_BASE_URL=http://127.0.0.1:8080/openai/v1 go run go_client.go
//
//	# Proxy mode against the real API: http.DefaultTransport honours HTTP(S)_PROXY and
//	# NO_PROXY, and on Linux crypto/x509 reads its roots from SSL_CERT_FILE.
//	HTTPS_PROXY=http://127.0.0.1:8080 SSL_CERT_FILE=$PWD/ca-bundle.pem go run go_client.go
//
// No API key is needed in the app: the proxy injects one from its pool. (Go never proxies
// requests to localhost or 127.0.0.1, which route mode does not need anyway.)
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	base := os.Getenv("OPENAI_BASE_URL")
	if base == "" {
		base = "https://api.openai.com/v1"
	}
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}`
	req, err := http.NewRequest("POST", base+"/chat/completions", strings.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("content-type", "application/json")
	if key := os.Getenv("OPENAI_API_KEY"); key != "" {
		req.Header.Set("authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "request failed:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	fmt.Println("status:", resp.StatusCode, "key:", resp.Header.Get("x-quota-proxy-key"),
		"delayed ms:", resp.Header.Get("x-quota-proxy-delayed-ms"))
	var out struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
		Error *struct{ Message string } `json:"error"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		fmt.Println("body:", string(data))
		return
	}
	if out.Error != nil {
		fmt.Println("error:", out.Error.Message, "retry-after:", resp.Header.Get("retry-after"))
	} else if len(out.Choices) > 0 {
		fmt.Println("reply:", out.Choices[0].Message.Content)
	}
}
