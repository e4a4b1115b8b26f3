package launch

import (
	"flag"
	"strings"
	"testing"

	"github.com/gochat/gochat/services/internal/config"
)

// TestKafkaSecurityFromEnv feeds the Kafka variables the operator sets on
// im-logic and im-task (operator/internal/resources, env) through the
// services' own flag parsing: the configurations the operator builds are
// accepted, and SASL over plaintext is refused unless opted into.
func TestKafkaSecurityFromEnv(t *testing.T) {
	base := map[string]string{"GOCHAT_KAFKA_BROKERS": "kafka:9093", "GOCHAT_KAFKA_TOPIC_PREFIX": "demo", "GOCHAT_KAFKA_ENSURE_TOPICS": "false"}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
		wantTLS bool
	}{
		{"SASL over TLS with the system roots (credentials Secret without ca.crt)", map[string]string{
			"GOCHAT_KAFKA_SASL_USER": "u", "GOCHAT_KAFKA_SASL_PASSWORD": "p", "GOCHAT_KAFKA_TLS": "true"}, "", true},
		{"SASL over plaintext, opted in", map[string]string{
			"GOCHAT_KAFKA_SASL_USER": "u", "GOCHAT_KAFKA_SASL_PASSWORD": "p", "GOCHAT_KAFKA_ALLOW_PLAINTEXT_SASL": "true"}, "", false},
		{"SASL over plaintext, not opted in", map[string]string{
			"GOCHAT_KAFKA_SASL_USER": "u", "GOCHAT_KAFKA_SASL_PASSWORD": "p"}, "in the clear", false},
		{"TLS without SASL", map[string]string{"GOCHAT_KAFKA_TLS": "true"}, "", true},
		{"plaintext without SASL", map[string]string{}, "", false},
		{"a CA file that is not there", map[string]string{"GOCHAT_KAFKA_TLS": "true", "GOCHAT_KAFKA_TLS_CA": "/nonexistent/ca.crt"}, "read kafka CA file", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			fs := flag.NewFlagSet("logic", flag.ContinueOnError)
			var kf KafkaFlags
			kf.Register(fs)
			if err := config.Parse(fs, nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
				t.Fatal(err)
			}
			c := kf.Config()
			err := c.Validate()
			if err == nil {
				_, err = c.ClientOptions()
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one about %q", err, tt.wantErr)
			}
			if c.TLS != tt.wantTLS {
				t.Fatalf("TLS %v, want %v", c.TLS, tt.wantTLS)
			}
		})
	}
}
