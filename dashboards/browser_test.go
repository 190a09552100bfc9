package dashboards_test

import (
	"os"
	"testing"

	"github.com/lambda-platform/lambda/dashboards/browsertest"
)

// TestBrowser opens the dashboards of a running stack with data in headless Chromium:
//
//	LAMBDA_BROWSER_URL=http://127.0.0.1:8080/ go test ./dashboards -run TestBrowser -v
//
// LAMBDA_API_KEY is used when the server requires a key; LAMBDA_BROWSER_SCREENSHOT names the
// screenshot (default artifacts/dashboard.png at the repository root).
func TestBrowser(t *testing.T) {
	url := os.Getenv("LAMBDA_BROWSER_URL")
	if url == "" {
		t.Skip("LAMBDA_BROWSER_URL is not set: the browser test needs a running stack with data (make run)")
	}
	browsertest.Check(t, browsertest.Options{
		URL:        url,
		APIKey:     os.Getenv("LAMBDA_API_KEY"),
		Screenshot: os.Getenv("LAMBDA_BROWSER_SCREENSHOT"),
	})
}
