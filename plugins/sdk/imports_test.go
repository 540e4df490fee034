package sdk_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The SDK is what third parties compile into their plugins: it must not drag
// in keyrelay's server code, so it can become a module of its own.
func TestImportsStayOutsideKeyrelay(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".", "./sdktest").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := []string{
		"github.com/keyrelay/keyrelay/plugins/sdk", // itself and its subpackages
		"github.com/hashicorp/go-plugin",
		"github.com/hashicorp/go-hclog",
		"github.com/hashicorp/yamux",
		"github.com/oklog/run",
		"github.com/fatih/color",
		"github.com/mattn/go-colorable",
		"github.com/mattn/go-isatty",
		"github.com/golang/protobuf",
		"google.golang.org/grpc",
		"google.golang.org/protobuf",
		"google.golang.org/genproto/googleapis/rpc",
		"golang.org/x/net",
		"golang.org/x/sys",
		"golang.org/x/text",
	}
	for _, pkg := range strings.Fields(string(out)) {
		ok := false
		for _, prefix := range allowed {
			if pkg == prefix || strings.HasPrefix(pkg, prefix+"/") {
				ok = true
				break
			}
		}
		if !ok {
			t.Errorf("plugins/sdk depends on %s: only the standard library, go-plugin, gRPC, protobuf and their dependencies are allowed", pkg)
		}
	}
}
