package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/gochat/gochat/services/internal/config"
	"github.com/gochat/gochat/services/internal/launch"
)

// writeConfigDocs renders docs/configuration.md from the flags themselves, so
// the page cannot drift from the code (TestConfigDocs checks it).
func writeConfigDocs(w io.Writer) {
	fmt.Fprint(w, `# Configuration

Every setting is a flag of a `+"`gochat`"+` subcommand and, with the same name in
upper case with underscores and a `+"`GOCHAT_`"+` prefix, an environment variable:
`+"`--mysql-dsn`"+` is `+"`GOCHAT_MYSQL_DSN`"+`. A flag on the command line wins over the
environment. Pass secrets (`+"`GOCHAT_JWT_SECRET`, `GOCHAT_MYSQL_DSN`, `GOCHAT_REDIS_PASSWORD`, `GOCHAT_KAFKA_SASL_PASSWORD`, `GOCHAT_WEBHOOK_SECRET`"+`)
through the environment: command lines are visible to every user of the machine.

Every service's gRPC is mutual TLS: `+"`--tls-ca`, `--tls-cert` and `--tls-key`"+` (`+"`GOCHAT_TLS_CA`"+`,
`+"`GOCHAT_TLS_CERT`, `GOCHAT_TLS_KEY`"+`) are required, and are re-read when the files change.
`+"`--insecure-internal`"+` serves and dials plaintext with no caller checks instead: for tests only.
`+"`gochat dev`"+` makes its own CA and certificates; the operator mounts them from Secrets
(docs/architecture.md, "Internal authentication").

`+"`GOCHAT_PPROF=1`"+` (no flag) adds Go's profiles, `+"`/debug/pprof/`"+`, to a service's
`+"`--metrics-addr`"+`: off by default, since they expose the process's internals to
whoever reaches that port (`+"`curl -o cpu.pprof http://127.0.0.1:9100/debug/pprof/profile?seconds=15`"+`).

This page is generated from the code: `+"`go test ./services/cmd/gochat -run TestConfigDocs -update`"+`.
`)
	for _, c := range commands {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		var lf launch.LogFlags
		lf.Register(fs)
		c.make().Register(fs)
		fmt.Fprintf(w, "\n## `gochat %s`\n\n%s.\n\n| flag | environment | default | meaning |\n|---|---|---|---|\n", c.name, c.summary)
		fs.VisitAll(func(f *flag.Flag) {
			def := f.DefValue
			if def == "" {
				def = "(empty)"
			}
			usage := strings.ReplaceAll(f.Usage, "|", `\|`)
			fmt.Fprintf(w, "| `--%s` | `%s` | `%s` | %s |\n", f.Name, config.EnvName(f.Name), def, usage)
		})
	}
}
