// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3/etcdmain), built from
// the Go module at the version k8s.io/kubernetes itself pins, for the e2e control plane.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
