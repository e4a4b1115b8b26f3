// Package testcluster starts GoChat as real processes for tests: the gochat
// binary built once, a Kafka broker process, the four services on loopback
// against this machine's MariaDB and Redis, and clients that speak only the
// public client API.
package testcluster

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

// MySQLServerDSN is the test MariaDB without a database: GOCHAT_TEST_MYSQL_DSN
// or root with no password on 127.0.0.1:3306.
func MySQLServerDSN() string {
	if v := os.Getenv("GOCHAT_TEST_MYSQL_DSN"); v != "" {
		return v
	}
	return "root@tcp(127.0.0.1:3306)/"
}

// RedisAddr is the test Redis: GOCHAT_TEST_REDIS_ADDR or 127.0.0.1:6379.
func RedisAddr() string {
	if v := os.Getenv("GOCHAT_TEST_REDIS_ADDR"); v != "" {
		return v
	}
	return "127.0.0.1:6379"
}

// RandomName returns prefix plus 12 random hex digits.
func RandomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// FreshDatabase creates an empty database on the test MariaDB and drops it
// when the test ends. A MariaDB that cannot be reached fails the test: the
// backend tests never skip.
func FreshDatabase(t testing.TB) string {
	t.Helper()
	return FreshDatabaseOn(t, MySQLServerDSN())
}

// FreshDatabaseOn is FreshDatabase on the server of serverDSN (a MariaDB of
// the test's own, say).
func FreshDatabaseOn(t testing.TB, serverDSN string) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(serverDSN)
	if err != nil {
		t.Fatalf("GOCHAT_TEST_MYSQL_DSN: %v", err)
	}
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("MariaDB at %s is required for this test (start it, or set GOCHAT_TEST_MYSQL_DSN): %v", cfg.Addr, err)
	}
	name := RandomName("gochat_test_")
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name+" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err == nil {
			_, _ = db.Exec("DROP DATABASE IF EXISTS " + name)
			db.Close()
		}
	})
	cfg.DBName = name
	return cfg.FormatDSN()
}

// Redis returns a client on the test Redis and a key prefix of the test's
// own, whose keys are deleted when the test ends. An unreachable Redis fails the test.
func Redis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	return RedisOn(t, RedisAddr())
}

// RedisOn is Redis on the server at addr (a Redis of the test's own, say).
func RedisOn(t testing.TB, addr string) (*redis.Client, string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at %s is required for this test (start it, or set GOCHAT_TEST_REDIS_ADDR): %v", addr, err)
	}
	prefix := RandomName("gochat-test-") + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		c.Close()
	})
	return c, prefix
}

// FlushPrefix deletes every key under prefix (a Redis that lost its data).
func FlushPrefix(ctx context.Context, c *redis.Client, prefix string) error {
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		if err := c.Del(ctx, iter.Val()).Err(); err != nil {
			return err
		}
	}
	return iter.Err()
}

// FreePort returns a loopback address nobody listens on right now.
func FreePort(t testing.TB) string {
	t.Helper()
	addrs, err := freeAddrs(1)
	if err != nil {
		t.Fatal(err)
	}
	return addrs[0]
}

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf(format+": %v", append(args, err)...)
	}
}
