//go:build tools

// Package tools only pins the commands build.sh compiles.
package tools
