package task

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/gochat/gochat/services/internal/clientapi"
)

var notifications = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "gochat_task_notifications_total", Help: "Offline notifications by result: sent, failed, dropped (queue full).",
}, []string{"result"})

// Notification tells a push relay that an offline user has a new message.
type Notification struct {
	UserID         string            `json:"user_id"`
	ConversationID string            `json:"conversation_id"`
	Message        clientapi.Message `json:"message"`
	// Unread is the user's unread count over all conversations (for a badge).
	Unread int64 `json:"unread"`
}

// notifier posts batches of notifications to a webhook, signed with
// HMAC-SHA256 so the relay can trust them. It works off a bounded queue on
// its own goroutine: a slow relay never slows delivery to online users.
// Notifications are best effort; the messages themselves are stored.
type notifier struct {
	url    string
	secret []byte
	client *http.Client
	queue  chan []Notification
	log    *slog.Logger
}

func newNotifier(url, secret string, log *slog.Logger) *notifier {
	return &notifier{
		url: url, secret: []byte(secret), log: log,
		client: &http.Client{Timeout: 5 * time.Second},
		queue:  make(chan []Notification, 1024),
	}
}

// enqueue hands a batch to the sender goroutine, dropping it if the queue is full.
func (n *notifier) enqueue(batch []Notification) {
	select {
	case n.queue <- batch:
	default:
		notifications.WithLabelValues("dropped").Add(float64(len(batch)))
		n.log.Warn("notification queue full, dropping a batch", "count", len(batch))
	}
}

func (n *notifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case batch := <-n.queue:
			if err := n.post(ctx, batch); err != nil {
				notifications.WithLabelValues("failed").Add(float64(len(batch)))
				n.log.Error("offline notifications not delivered", "count", len(batch), "err", err)
				continue
			}
			notifications.WithLabelValues("sent").Add(float64(len(batch)))
		}
	}
}

// Sign is the value of X-GoChat-Signature for a body sent at a Unix time:
// "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body)).
func Sign(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte("."))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func (n *notifier) post(ctx context.Context, batch []Notification) error {
	body, err := json.Marshal(map[string]any{"notifications": batch})
	if err != nil {
		return fmt.Errorf("encode notifications: %w", err)
	}
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("build webhook request: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GoChat-Timestamp", ts)
		req.Header.Set("X-GoChat-Signature", Sign(n.secret, ts, body))
		resp, err := n.client.Do(req)
		if err != nil {
			last = fmt.Errorf("post webhook: %w", err)
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return nil
		}
		last = fmt.Errorf("webhook answered %s", resp.Status)
		if resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusTooManyRequests {
			return last // the relay refuses this batch: retrying will not help
		}
	}
	return last
}
