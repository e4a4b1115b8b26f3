package repo

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"gorm.io/gorm"
)

// A migration moves the schema one version up. Each one is frozen once
// released: it uses its own copies of the row types, so later model changes
// never change what an old migration creates.
type migration struct {
	version int
	name    string
	up      func(tx *gorm.DB) error
}

type schemaMigration struct {
	Version     int    `gorm:"primaryKey;autoIncrement:false"`
	Name        string `gorm:"size:128;not null"`
	AppliedAtMs int64  `gorm:"not null"`
}

func (schemaMigration) TableName() string { return "schema_migrations" }

var migrations = []migration{
	{version: 1, name: "initial schema", up: func(tx *gorm.DB) error {
		// The v1 row types are the ones in models.go as of this release.
		return tx.Migrator().CreateTable(&userRow{}, &conversationRow{}, &memberRow{}, &messageRow{})
	}},
	{version: 2, name: "dispatch outbox", up: func(tx *gorm.DB) error {
		type outbox struct {
			MessageID  string `gorm:"primaryKey;size:26"`
			StoredAtMs int64  `gorm:"not null;index:idx_outbox_stored"`
		}
		return tx.Table("outbox").Migrator().CreateTable(&outbox{})
	}},
	{version: 3, name: "member list versions", up: func(tx *gorm.DB) error {
		if tx.Migrator().HasColumn(&conversationRow{}, "MembersVersion") {
			return nil
		}
		return tx.Migrator().AddColumn(&conversationRow{}, "MembersVersion")
	}},
	{version: 4, name: "outbox leases", up: func(tx *gorm.DB) error {
		if tx.Migrator().HasColumn(&outboxRow{}, "LeaseUntilMs") {
			return nil
		}
		return tx.Migrator().AddColumn(&outboxRow{}, "LeaseUntilMs")
	}},
	{version: 5, name: "event outbox", up: func(tx *gorm.DB) error {
		type eventOutbox struct {
			ID             int64  `gorm:"primaryKey;autoIncrement"`
			ConversationID string `gorm:"size:26;not null"`
			Event          []byte `gorm:"not null"`
			StoredAtMs     int64  `gorm:"not null;index:idx_event_outbox_stored"`
			LeaseUntilMs   int64  `gorm:"not null;default:0"`
		}
		return tx.Table("event_outbox").Migrator().CreateTable(&eventOutbox{})
	}},
	{version: 6, name: "guest expiry index", up: func(tx *gorm.DB) error {
		// The guest sweep (every minute, on every repo replica) looks for
		// old guests in creation order; without this index it read the
		// whole users table each time (TestExpireGuestsReadsByIndex).
		type users struct {
			Guest       bool  `gorm:"not null;index:idx_users_guest_created,priority:1"`
			CreatedAtMs int64 `gorm:"not null;index:idx_users_guest_created,priority:2"`
		}
		m := tx.Table("users").Migrator()
		if m.HasIndex(&users{}, "idx_users_guest_created") {
			return nil
		}
		return m.CreateIndex(&users{}, "idx_users_guest_created")
	}},
}

// SchemaVersion is the version this build expects.
func SchemaVersion() int { return migrations[len(migrations)-1].version }

// Migrate brings the schema to SchemaVersion. On MySQL a named lock keeps two
// replicas (or a replica and the migration Job) from migrating at once.
func Migrate(ctx context.Context, db *gorm.DB, log *slog.Logger) error {
	db = db.WithContext(ctx)
	if db.Dialector.Name() == "mysql" {
		conn, err := db.DB()
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		c, err := conn.Conn(ctx)
		if err != nil {
			return fmt.Errorf("migrate: get connection: %w", err)
		}
		defer c.Close()
		var got int
		if err := c.QueryRowContext(ctx, "SELECT GET_LOCK('gochat_migrate', 120)").Scan(&got); err != nil || got != 1 {
			return fmt.Errorf("migrate: could not take the migration lock (got %d): %v", got, err)
		}
		defer c.ExecContext(context.WithoutCancel(ctx), "SELECT RELEASE_LOCK('gochat_migrate')") //nolint:errcheck
	}
	if err := db.Table("schema_migrations").Migrator().AutoMigrate(&schemaMigration{}); err != nil {
		return fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	var applied []schemaMigration
	if err := db.Find(&applied).Error; err != nil {
		return fmt.Errorf("migrate: read schema_migrations: %w", err)
	}
	done := map[int]bool{}
	for _, m := range applied {
		done[m.Version] = true
		if m.Version > SchemaVersion() {
			return fmt.Errorf("migrate: the database is at schema version %d, newer than this build's %d: run a newer image", m.Version, SchemaVersion())
		}
	}
	for _, m := range migrations {
		if done[m.version] {
			continue
		}
		start := time.Now()
		tx := db
		if db.Dialector.Name() == "mysql" {
			tx = tx.Set("gorm:table_options", "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
		}
		if err := m.up(tx); err != nil {
			return fmt.Errorf("migrate: version %d (%s): %w", m.version, m.name, err)
		}
		if err := db.Create(&schemaMigration{Version: m.version, Name: m.name, AppliedAtMs: time.Now().UnixMilli()}).Error; err != nil {
			return fmt.Errorf("migrate: record version %d: %w", m.version, err)
		}
		log.Info("schema migrated", "version", m.version, "name", m.name, "took", time.Since(start))
	}
	return nil
}

// CheckSchema fails unless the database is exactly at SchemaVersion, so a repo
// pod never serves a schema it does not know.
func CheckSchema(ctx context.Context, db *gorm.DB) error {
	var v int
	if err := db.WithContext(ctx).Raw("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&v).Error; err != nil {
		return fmt.Errorf("read schema version (has the migration run?): %w", err)
	}
	if v != SchemaVersion() {
		return fmt.Errorf("database schema is at version %d, this build needs %d: run the migration", v, SchemaVersion())
	}
	return nil
}
