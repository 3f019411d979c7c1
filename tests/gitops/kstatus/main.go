// kstatus reads one Kubernetes object as JSON on stdin and prints what kstatus
// (sigs.k8s.io/cli-utils/pkg/kstatus/status, the library Flux and `kubectl wait`-style tools
// use) computes for it, as one JSON line: {"status": "Current", "message": "..."}.
// Used by tests/gitops and the e2e suite to show how kstatus reads Sluice's status.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	var object map[string]interface{}
	// Numbers as int64 where they are integers, as client-go decodes them (kstatus reads
	// metadata.generation with NestedInt64).
	if err := utiljson.Unmarshal(data, &object); err != nil {
		fail("stdin is not a JSON object: %v", err)
	}
	result, err := status.Compute(&unstructured.Unstructured{Object: object})
	if err != nil {
		fail("status.Compute: %v", err)
	}
	out, _ := json.Marshal(map[string]string{
		"status":  result.Status.String(),
		"message": result.Message,
	})
	fmt.Println(string(out))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(2)
}
