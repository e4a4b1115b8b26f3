package repo

import (
	"strings"
	"testing"
)

// A DSN's password never reaches an error, and so never a log line or the
// migration Job's log that the operator copies into the ChatCluster.
func TestOpenDBNeverShowsThePassword(t *testing.T) {
	const pw = "s3cret-pw"
	tests := []struct{ name, dsn, want string }{
		{"unreachable server", "gochat:" + pw + "@tcp(127.0.0.1:1)/gochat", "connection refused"},
		{"unterminated address", "gochat:" + pw + "@tcp(127.0.0.1:3306/gochat", "invalid DSN"},
		{"bad parameter", "gochat:" + pw + "@tcp(127.0.0.1:1)/gochat?parseTime=maybe", "invalid bool value"},
		{"a bare password", pw, "not shown"},
		{"a password with an at sign", "gochat:p@" + pw + "@tcp(127.0.0.1:1)/gochat", "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := OpenDB(DBConfig{MySQLDSN: tt.dsn})
			if err == nil {
				t.Fatal("opened")
			}
			if strings.Contains(err.Error(), pw) {
				t.Fatalf("the password is in the error: %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
}
