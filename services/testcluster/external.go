package testcluster

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// OwnRedis starts a redis-server of the test's own on a free loopback port
// (no persistence), for tests that stop Redis or flush it: the shared Redis
// is never stopped or flushed. It returns the process and its address.
func OwnRedis(t testing.TB) (*Process, string) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	mustf(t, err, "redis-server is required for this test")
	addr := FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	p := StartProgram(t, "redis", bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	waitFor(t, "redis answering on "+addr, p, func() bool {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err() == nil
	})
	return p, addr
}

// OwnMariaDB starts a mariadbd of the test's own (a fresh data directory,
// root without a password, grant tables off) on a free loopback port, for
// tests that stop the database: the shared MariaDB is never stopped. It
// returns the process and a DSN of the server without a database.
func OwnMariaDB(t testing.TB) (*Process, string) {
	t.Helper()
	install, err := exec.LookPath("mariadb-install-db")
	mustf(t, err, "mariadb-install-db is required for this test")
	server, err := exec.LookPath("mariadbd")
	mustf(t, err, "mariadbd is required for this test")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	out, err := exec.Command(install, "--no-defaults", "--datadir="+data, "--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput()
	mustf(t, err, "mariadb-install-db: %s", out)
	addr := FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	p := StartProgram(t, "mariadb", server, "--no-defaults", "--user=root", "--datadir="+data, "--port="+port,
		"--bind-address=127.0.0.1", "--socket="+filepath.Join(dir, "mysqld.sock"), "--pid-file="+filepath.Join(dir, "mysqld.pid"),
		"--skip-grant-tables", "--skip-log-bin", "--innodb-buffer-pool-size=32M")
	dsn := fmt.Sprintf("root@tcp(%s)/", addr)
	waitFor(t, "mariadb answering on "+addr, p, func() bool { return PingMySQL(dsn) == nil })
	return p, dsn
}

// PingMySQL connects to dsn and pings it, within a second.
func PingMySQL(dsn string) error {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return db.PingContext(ctx)
}
