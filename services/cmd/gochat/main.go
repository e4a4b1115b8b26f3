// Command gochat is GoChat's one binary: each service is a subcommand, so one
// image serves all four (im-gateway, im-logic, im-repo, im-task).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/gochat/gochat/services/internal/config"
	"github.com/gochat/gochat/services/internal/launch"
	"github.com/gochat/gochat/services/internal/repo"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type service interface {
	Register(fs *flag.FlagSet)
	Run(ctx context.Context, log *slog.Logger) error
}

type command struct {
	name, summary string
	make          func() service
}

var commands = []command{
	{"gateway", "im-gateway: the client API (HTTP, WebSocket) and the push service", func() service { return &launch.Gateway{} }},
	{"logic", "im-logic: accounts, conversations, groups and the send path", func() service { return &launch.Logic{} }},
	{"repo", "im-repo: MySQL, Redis caches, presence and sequence numbers", func() service { return &launch.Repo{} }},
	{"task", "im-task: consumes Kafka and pushes to the gateways", func() service { return &launch.Task{} }},
	{"migrate", "migrate the database schema to this version, then exit", func() service { return &migrateCmd{} }},
	{"dev", "all four services in one process on embedded SQLite, Redis and Kafka", func() service { return &launch.Dev{} }},
	{"dev-kafka", "only the embedded Kafka broker of dev (for tests and local runs)", func() service { return &launch.DevKafka{} }},
	{"issue-cert", "mint a certificate for a component (admin: a person's credential for the gateways' admin service) from a CA's files", func() service { return &launch.IssueCert{} }},
}

func usage() {
	fmt.Fprintf(os.Stderr, "gochat %s\n\nUsage: gochat <command> [flags]\n\nCommands:\n", version)
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(os.Stderr, "  %-10s %s\n\nEvery flag --name can also be set as GOCHAT_NAME (dashes as underscores).\n'gochat <command> -h' lists a command's flags and defaults.\n", "version", "print the version")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "version" || name == "--version" {
		fmt.Println(version)
		return
	}
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	for _, c := range commands {
		if c.name == name {
			os.Exit(run(c))
		}
	}
	fmt.Fprintf(os.Stderr, "gochat: unknown command %q\n\n", name)
	usage()
	os.Exit(2)
}

func run(c command) int {
	fs := flag.NewFlagSet("gochat "+c.name, flag.ContinueOnError)
	var logFlags launch.LogFlags
	logFlags.Register(fs)
	svc := c.make()
	svc.Register(fs)
	if err := config.ParseOS(fs, os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "gochat %s: %v\n", c.name, err)
		return 2
	}
	log, err := logFlags.Logger()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gochat %s: %v\n", c.name, err)
		return 2
	}
	if c.name != "dev" { // dev names each of its services itself
		log = log.With("service", "im-"+c.name)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal stops gently (a gateway drains); a second one
	// takes the default action and ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	if err := svc.Run(ctx, log.With("build", version)); err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	return 0
}

type migrateCmd struct{ db launch.DBFlags }

func (m *migrateCmd) Register(fs *flag.FlagSet) { m.db.Register(fs) }

func (m *migrateCmd) Run(ctx context.Context, log *slog.Logger) error {
	db, err := repo.OpenDB(m.db.DBConfig)
	if err != nil {
		return err
	}
	if err := repo.Migrate(ctx, db, log); err != nil {
		return err
	}
	log.Info("schema is current", "version", repo.SchemaVersion())
	return nil
}
