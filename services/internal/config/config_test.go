package config

import (
	"flag"
	"io"
	"reflect"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantDSN string
		wantTTL time.Duration
		wantBrk []string
		wantErr bool
	}{
		{name: "defaults", wantDSN: "", wantTTL: time.Hour, wantBrk: []string{"127.0.0.1:9092"}},
		{name: "env fills", env: map[string]string{"GOCHAT_MYSQL_DSN": "x", "GOCHAT_TOKEN_TTL": "2h", "GOCHAT_KAFKA_BROKERS": "a:1, b:2"}, wantDSN: "x", wantTTL: 2 * time.Hour, wantBrk: []string{"a:1", "b:2"}},
		{name: "flag wins", args: []string{"--mysql-dsn=flag"}, env: map[string]string{"GOCHAT_MYSQL_DSN": "env"}, wantDSN: "flag", wantTTL: time.Hour, wantBrk: []string{"127.0.0.1:9092"}},
		{name: "bad env value", env: map[string]string{"GOCHAT_TOKEN_TTL": "soon"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			dsn := fs.String("mysql-dsn", "", "")
			ttl := fs.Duration("token-ttl", time.Hour, "")
			brokers := List{"127.0.0.1:9092"}
			fs.Var(&brokers, "kafka-brokers", "")
			err := Parse(fs, tt.args, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if *dsn != tt.wantDSN || *ttl != tt.wantTTL || !reflect.DeepEqual([]string(brokers), tt.wantBrk) {
				t.Fatalf("got %q %s %v", *dsn, *ttl, brokers)
			}
		})
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("kafka-topic-prefix"); got != "GOCHAT_KAFKA_TOPIC_PREFIX" {
		t.Fatal(got)
	}
}
