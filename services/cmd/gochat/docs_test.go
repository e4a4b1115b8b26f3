package main

import (
	"bytes"
	"flag"
	"os"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md")

const configDocs = "../../../docs/configuration.md"

func TestConfigDocs(t *testing.T) {
	var b bytes.Buffer
	writeConfigDocs(&b)
	if *update {
		if err := os.WriteFile(configDocs, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	have, err := os.ReadFile(configDocs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, b.Bytes()) {
		t.Fatal("docs/configuration.md is stale: run go test ./services/cmd/gochat -run TestConfigDocs -update")
	}
}
