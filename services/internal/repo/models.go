package repo

// The table rows. Times are Unix milliseconds in BIGINT columns: the same on
// MySQL and SQLite, with no time zone or driver parseTime settings to get wrong.

type userRow struct {
	ID           string `gorm:"primaryKey;size:26"`
	Username     string `gorm:"size:32;not null;uniqueIndex:uniq_users_username"`
	PasswordHash string `gorm:"size:255;not null"`
	Nickname     string `gorm:"size:64;not null"`
	Guest        bool   `gorm:"not null"`
	CreatedAtMs  int64  `gorm:"not null"`
}

func (userRow) TableName() string { return "users" }

const (
	convDirect int8 = 1
	convGroup  int8 = 2
)

type conversationRow struct {
	ID      string `gorm:"primaryKey;size:26"`
	Type    int8   `gorm:"not null"`
	Name    string `gorm:"size:128;not null"`
	OwnerID string `gorm:"size:26;not null"`
	// DirectKey is "<smaller user id>:<larger user id>" for direct conversations
	// and NULL for groups; its unique index makes "created on first use" race-free.
	DirectKey *string `gorm:"size:53;uniqueIndex:uniq_conversations_direct_key"`
	MaxSeq    int64   `gorm:"not null"`
	// MembersVersion grows with every membership change, in the change's
	// own transaction: a cached member list is used only while its version
	// is the row's, so no race or lost invalidation can keep a removed member.
	MembersVersion int64 `gorm:"not null;default:0"`
	CreatedAtMs    int64 `gorm:"not null"`
	LastActivityMs int64 `gorm:"not null"`
}

func (conversationRow) TableName() string { return "conversations" }

const (
	roleOwner  int8 = 1
	roleAdmin  int8 = 2
	roleMember int8 = 3
)

type memberRow struct {
	ConversationID string `gorm:"primaryKey;size:26"`
	UserID         string `gorm:"primaryKey;size:26;index:idx_members_user"`
	Role           int8   `gorm:"not null"`
	ReadSeq        int64  `gorm:"not null"`
	JoinedAtMs     int64  `gorm:"not null"`
}

func (memberRow) TableName() string { return "members" }

type messageRow struct {
	ID             string `gorm:"primaryKey;size:26"`
	ConversationID string `gorm:"size:26;not null;uniqueIndex:uniq_messages_conv_seq,priority:1"`
	Seq            int64  `gorm:"not null;uniqueIndex:uniq_messages_conv_seq,priority:2"`
	SenderID       string `gorm:"size:26;not null;uniqueIndex:uniq_messages_sender_client,priority:1"`
	ClientMsgID    string `gorm:"size:64;not null;uniqueIndex:uniq_messages_sender_client,priority:2"`
	ContentType    string `gorm:"size:32;not null"`
	Content        string `gorm:"type:text;not null"`
	CreatedAtMs    int64  `gorm:"not null"`
}

func (messageRow) TableName() string { return "messages" }

// outboxRow is a stored message whose dispatch record Kafka has not yet
// confirmed. It is written in the message's own transaction.
type outboxRow struct {
	MessageID  string `gorm:"primaryKey;size:26"`
	StoredAtMs int64  `gorm:"not null;index:idx_outbox_stored"`
	// LeaseUntilMs: a relay that listed the row owns it until then, so
	// replicas relay different rows.
	LeaseUntilMs int64 `gorm:"not null;default:0"`
}

func (outboxRow) TableName() string { return "outbox" }

// eventOutboxRow is a group or read event whose dispatch record Kafka has
// not yet confirmed, written in the transaction of its change. ID grows
// with each event, so a conversation's rows in ID order are its changes in
// order.
type eventOutboxRow struct {
	ID             int64  `gorm:"primaryKey;autoIncrement"`
	ConversationID string `gorm:"size:26;not null"`
	Event          []byte `gorm:"not null"` // a protobuf DispatchEvent
	StoredAtMs     int64  `gorm:"not null;index:idx_event_outbox_stored"`
	LeaseUntilMs   int64  `gorm:"not null;default:0"`
}

func (eventOutboxRow) TableName() string { return "event_outbox" }
