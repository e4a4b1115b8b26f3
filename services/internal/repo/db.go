package repo

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/glebarez/sqlite"
	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// DBConfig says which database to open: MySQL when MySQLDSN is set, else SQLite.
type DBConfig struct {
	MySQLDSN     string
	SQLitePath   string
	MaxOpenConns int
}

// connMaxLifetime retires pooled connections before a proxy or the
// server's wait_timeout drops them under a query.
const connMaxLifetime = 30 * time.Minute

// OpenDB opens the database and checks that it answers.
func OpenDB(cfg DBConfig) (*gorm.DB, error) {
	gcfg := &gorm.Config{
		Logger:                 logger.Discard,
		SkipDefaultTransaction: true,
		PrepareStmt:            false,
		NowFunc:                func() time.Time { return time.Now().UTC() },
	}
	var (
		db  *gorm.DB
		err error
	)
	switch {
	case cfg.MySQLDSN != "":
		dsn, derr := withTimeouts(cfg.MySQLDSN)
		if derr != nil {
			return nil, fmt.Errorf("mysql dsn (%s): %w", redactDSN(cfg.MySQLDSN), derr)
		}
		db, err = gorm.Open(mysql.Open(dsn), gcfg)
		if err != nil {
			return nil, fmt.Errorf("open mysql (%s): %w", redactDSN(cfg.MySQLDSN), err)
		}
	case cfg.SQLitePath != "":
		// WAL and a busy timeout let readers run beside the one writer; a single
		// connection for writes keeps SQLite from answering SQLITE_BUSY.
		dsn := cfg.SQLitePath + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
		db, err = gorm.Open(sqlite.Open(dsn), gcfg)
		if err != nil {
			return nil, fmt.Errorf("open sqlite %s: %w", cfg.SQLitePath, err)
		}
		cfg.MaxOpenConns = 1
	default:
		return nil, fmt.Errorf("no database configured: set --mysql-dsn (GOCHAT_MYSQL_DSN) or --sqlite-path")
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, fmt.Errorf("database handle: %w", err)
	}
	if cfg.MaxOpenConns > 0 {
		sqlDB.SetMaxOpenConns(cfg.MaxOpenConns)
		sqlDB.SetMaxIdleConns(cfg.MaxOpenConns)
	}
	sqlDB.SetConnMaxLifetime(connMaxLifetime)
	if err := sqlDB.Ping(); err != nil {
		return nil, fmt.Errorf("ping database (%s): %w", redactDSN(cfg.MySQLDSN+cfg.SQLitePath), err)
	}
	return db, nil
}

// redactDSN hides the password of a MySQL DSN (user:password@tcp(...)/db) so
// errors and logs can name the database without leaking the secret.
func redactDSN(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	if at < 0 {
		// No credentials in a DSN that parses; one that does not may be
		// anything, a bare password included, so it is not shown.
		if _, err := gomysql.ParseDSN(dsn); err != nil {
			return "not shown: it does not parse"
		}
		return dsn
	}
	creds := dsn[:at]
	if colon := strings.Index(creds, ":"); colon >= 0 {
		return creds[:colon] + ":***" + dsn[at:]
	}
	return dsn
}

func logDB(log *slog.Logger, db *gorm.DB) {
	log.Info("database ready", "dialect", db.Dialector.Name(), "schema_version", SchemaVersion())
}

// withTimeouts gives a MySQL DSN dial, read and write timeouts unless it has
// its own: without them a connection to a hung server blocks its caller
// forever, whatever the caller's context says. It also has the driver put
// the arguments into the statements (interpolateParams): otherwise every
// statement with arguments is a server-side PREPARE, EXECUTE and CLOSE, two
// round trips and a parse where one does, which doubles the round trips of a
// store batch, the send path's critical section. The driver refuses it for
// the few character sets where escaping is unsafe (GBK, Big5, SJIS…).
func withTimeouts(dsn string) (string, error) {
	c, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return "", err
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 30 * time.Second
	}
	c.InterpolateParams = true
	return c.FormatDSN(), nil
}

// dialectorDSN is the DSN a MySQL gorm.DB was opened with (withTimeouts'),
// or "" for another database.
func dialectorDSN(db *gorm.DB) string {
	if d, ok := db.Dialector.(*mysql.Dialector); ok && d.Config != nil {
		return d.DSN
	}
	return ""
}
