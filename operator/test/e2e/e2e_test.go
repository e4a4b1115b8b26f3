//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"sigs.k8s.io/yaml"

	"github.com/gochat/gochat/operator/test/utils"
	tc "github.com/gochat/gochat/services/testcluster"
)

const wait = 30 * time.Second

// TestE2E is the scenarios of issue 10 in order; each builds on the last, so
// the first failure stops the run (and saves the artifacts).
func TestE2E(t *testing.T) {
	defer func() {
		if t.Failed() {
			utils.SaveArtifacts(t, operatorNS, appNS, backendsNS)
		}
	}()
	steps := []struct {
		name string
		run  func(*testing.T)
	}{
		{"1-install", testInstall},
		{"2-bring-up", testBringUp},
		{"3-chat", testChat},
		{"4-scale", testScale},
		{"5-roll", testRoll},
		{"6-secret-rotation", testSecretRotation},
		{"7-failure", testFailure},
		{"8-teardown", testTeardown},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

// 1. helm install with the freshly built images: the operator becomes
// Ready, and its metrics answer only with an authorized token.
func testInstall(t *testing.T) {
	repo, tag, _ := strings.Cut(operatorImage, ":")
	utils.Helm().Must(t, "upgrade", "--install", release, filepath.Join(repoRoot(), "charts", "gochat-operator"),
		"--namespace", operatorNS, "--create-namespace", "--wait", "--timeout", "5m",
		"--set", "image.repository="+repo, "--set", "image.tag="+tag)
	k := utils.Kubectl()
	k.Must(t, "-n", operatorNS, "rollout", "status", "deployment/"+release+"-gochat-operator", "--timeout=3m")

	// Metrics: HTTPS with authentication and authorization (SubjectAccessReview).
	for _, sa := range []string{"e2e-metrics", "e2e-nobody"} {
		utils.Apply(t, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: "+sa+", namespace: "+operatorNS+"}\n")
	}
	utils.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-metrics-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: `+release+`-gochat-operator-metrics-reader}
subjects: [{kind: ServiceAccount, name: e2e-metrics, namespace: `+operatorNS+`}]`)
	t.Cleanup(func() {
		_, _ = k.Run(context.Background(), "", "delete", "clusterrolebinding", "e2e-metrics-reader", "--ignore-not-found")
	})
	reader := strings.TrimSpace(k.Must(t, "-n", operatorNS, "create", "token", "e2e-metrics"))
	nobody := strings.TrimSpace(k.Must(t, "-n", operatorNS, "create", "token", "e2e-nobody"))
	addr := utils.PortForward(t, operatorNS, "svc/"+release+"-gochat-operator-metrics", 8443)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the operator's self-signed serving cert
	}}
	get := func(token string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	for _, tt := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"not allowed", nobody, http.StatusForbidden},
		{"metrics reader", reader, http.StatusOK},
	} {
		utils.Eventually(t, wait, "metrics "+tt.name, func() error {
			st, body, err := get(tt.token)
			if err != nil {
				return err
			}
			if st != tt.want {
				return fmt.Errorf("status %d, want %d", st, tt.want)
			}
			if st == http.StatusOK && !strings.Contains(body, "controller_runtime_") {
				return fmt.Errorf("metrics lack controller_runtime_ series")
			}
			return nil
		})
	}
}

// The in-cluster Kafka: the gochat image's dev-kafka, a protocol-compatible
// test broker (not Apache Kafka), advertising its pod IP.
const kafkaYAML = `apiVersion: apps/v1
kind: Deployment
metadata: {name: kafka, namespace: ` + appNS + `}
spec:
  replicas: 1
  selector: {matchLabels: {app: kafka}}
  template:
    metadata: {labels: {app: kafka}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: kafka
        image: IMAGE
        args: ["dev-kafka", "--addr=$(POD_IP):9092"]
        env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
        ports: [{name: kafka, containerPort: 9092}]
        readinessProbe: {tcpSocket: {port: 9092}, periodSeconds: 2}
        resources: {requests: {cpu: 20m, memory: 32Mi}}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: kafka, namespace: ` + appNS + `}
spec:
  selector: {app: kafka}
  ports: [{name: kafka, port: 9092}]
`

// 2. The Secrets and the contract's sample ChatCluster, fitted to this
// cluster (images, backends, sizes): it reaches Running, and kubectl shows
// the printer columns.
func testBringUp(t *testing.T) {
	k := utils.Kubectl()
	utils.Apply(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+appNS+"}\n")
	// A clean start on a reused cluster: an earlier run's ChatCluster goes first.
	k.Must(t, "-n", appNS, "delete", "chat", cluster, "--ignore-not-found", "--timeout=3m")
	utils.Apply(t, strings.ReplaceAll(kafkaYAML, "IMAGE", gochatImage))
	k.Must(t, "-n", appNS, "rollout", "status", "deployment/kafka", "--timeout=3m")
	utils.Apply(t, `apiVersion: v1
kind: Secret
metadata: {name: mysql, namespace: `+appNS+`}
stringData: {dsn: "gochat:gochat@tcp(mysql.`+backendsNS+`.svc:3306)/gochat"}`)
	// The sample names its token secret (the one scenario 6 rotates).
	utils.Apply(t, `apiVersion: v1
kind: Secret
metadata: {name: `+cluster+`-jwt, namespace: `+appNS+`}
stringData: {secret: "`+randomHex(32)+`"}`)

	utils.Apply(t, sampleCluster(t, cluster, nil))
	// A second cluster starts now, so that its migration fails while the
	// other scenarios run (scenario 8 fixes and deletes it).
	startScratch(t)
	waitPhase(t, "Running", 5*time.Minute)

	// The printer columns, once the status has caught up with the spec
	// (on a reused cluster an earlier run may have left more gateways).
	utils.Eventually(t, 3*time.Minute, "kubectl get chat", func() error {
		table := k.Must(t, "-n", appNS, "get", "chat", cluster)
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 2 {
			return fmt.Errorf("kubectl get chat:\n%s", table)
		}
		if h := strings.Fields(lines[0]); strings.Join(h, " ") != "NAME PHASE GATEWAYS SESSIONS IMAGE AGE" {
			return fmt.Errorf("columns %v", h)
		}
		row := strings.Fields(lines[1])
		if len(row) < 5 || row[0] != cluster || row[1] != "Running" || row[2] != "1/1" || row[3] != "0" || row[4] != gochatImage {
			return fmt.Errorf("row %v: want demo Running 1/1 0 %s", row, gochatImage)
		}
		return nil
	})
}

// sampleCluster is the contract's sample (config/samples) named name and
// adapted to the test cluster, then changed by adapt (when not nil).
func sampleCluster(t *testing.T, name string, adapt func(spec map[string]any)) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "config", "samples", "chat_v1alpha1_chatcluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cc map[string]any
	if err := yaml.Unmarshal(raw, &cc); err != nil {
		t.Fatalf("sample: %v", err)
	}
	small := map[string]any{"requests": map[string]any{"cpu": "20m", "memory": "32Mi"}}
	spec := cc["spec"].(map[string]any)
	spec["image"] = gochatImage
	gw := spec["gateway"].(map[string]any)
	gw["replicas"], gw["resources"] = 1, small
	gw["service"] = map[string]any{"type": "ClusterIP", "port": 80}
	gw["drain"] = map[string]any{"timeout": "20s", "maxUnavailable": 1}
	spec["logic"] = map[string]any{"replicas": 1, "resources": small}
	spec["repo"] = map[string]any{"replicas": 2, "resources": small}
	spec["task"] = map[string]any{"replicas": 2, "resources": small}
	kafka := spec["kafka"].(map[string]any)
	kafka["bootstrapServers"] = []string{"kafka." + appNS + ".svc:9092"}
	// The in-cluster test broker speaks neither SASL nor TLS, and no push
	// relay runs here: the sample's credentials and webhook go.
	delete(kafka, "credentialsSecretRef")
	delete(spec, "notifications")
	kafka["replicationFactor"], kafka["partitions"] = 1, 4
	spec["redis"] = map[string]any{"address": "redis." + backendsNS + ".svc:6379"}
	md := cc["metadata"].(map[string]any)
	md["namespace"], md["name"] = appNS, name
	if adapt != nil {
		adapt(spec)
	}
	out, err := yaml.Marshal(cc)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// scratch is the second ChatCluster: its own topics, deleted with it, and a
// DSN Secret with a wrong password, so its first migration fails.
const scratch = "scratch"

func startScratch(t *testing.T) {
	k := utils.Kubectl()
	k.Must(t, "-n", appNS, "delete", "chat", scratch, "--ignore-not-found", "--timeout=3m")
	utils.Apply(t, `apiVersion: v1
kind: Secret
metadata: {name: scratch-mysql, namespace: `+appNS+`}
stringData: {dsn: "gochat:not-the-password@tcp(mysql.`+backendsNS+`.svc:3306)/gochat"}`)
	utils.Apply(t, sampleCluster(t, scratch, func(spec map[string]any) {
		spec["repo"] = map[string]any{"replicas": 1, "resources": map[string]any{"requests": map[string]any{"cpu": "20m", "memory": "32Mi"}}}
		spec["task"] = spec["repo"]
		kafka := spec["kafka"].(map[string]any)
		kafka["topicPrefix"], kafka["deleteTopicsOnDelete"] = scratch, true
		spec["mysql"] = map[string]any{"dsnSecretRef": map[string]any{"name": "scratch-mysql", "key": "dsn"}}
		delete(spec, "auth") // the operator makes its token secret
	}))
}

// chatCondition is one condition of a ChatCluster: status, reason, message.
func chatCondition(t testing.TB, name, typ string) (status, reason, message string) {
	out := utils.Kubectl().Must(t, "-n", appNS, "get", "chat", name, "-o",
		`jsonpath={.status.conditions[?(@.type=="`+typ+`")].status}{"\n"}{.status.conditions[?(@.type=="`+typ+`")].reason}{"\n"}{.status.conditions[?(@.type=="`+typ+`")].message}`)
	f := strings.SplitN(out, "\n", 3)
	for len(f) < 3 {
		f = append(f, "")
	}
	return f[0], f[1], f[2]
}

func phase(t testing.TB) string {
	out, err := utils.Kubectl().Run(context.Background(), "", "-n", appNS, "get", "chat", cluster, "-o", "jsonpath={.status.phase}")
	if err != nil {
		t.Logf("%v", err)
	}
	return out
}

func waitPhase(t testing.TB, want string, timeout time.Duration) {
	t.Helper()
	utils.Eventually(t, timeout, "ChatCluster "+want, func() error {
		if p := phase(t); p != want {
			return fmt.Errorf("phase %q", p)
		}
		return nil
	})
}

func uniq(prefix string) string { return prefix + randomHex(4) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// gatewayURL forwards to the gateway Service (its selector and ports).
func gatewayURL(t *testing.T) string {
	return "http://" + utils.PortForward(t, appNS, "svc/"+cluster+"-gateway", 80)
}

func wsURL(base string) string { return "ws" + strings.TrimPrefix(base, "http") + "/v1/ws" }

type conversation struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	MaxSeq  int64  `json:"max_seq"`
	ReadSeq int64  `json:"read_seq"`
	Unread  int64  `json:"unread"`
}

type message struct {
	ConversationID string `json:"conversation_id"`
	Seq            int64  `json:"seq"`
	SenderID       string `json:"sender_id"`
	Content        string `json:"content"`
}

type page struct {
	Messages []message `json:"messages"`
	HasMore  bool      `json:"has_more"`
}

func send(t *testing.T, w *tc.WS, conv, id, content string) message {
	t.Helper()
	if err := w.Send("send", map[string]any{"client_msg_id": id, "conversation_id": conv, "content": content}); err != nil {
		t.Fatal(err)
	}
	var ack struct {
		ClientMsgID string  `json:"client_msg_id"`
		Message     message `json:"message"`
	}
	w.Next(t, "ack", wait).Decode(t, &ack)
	if ack.ClientMsgID != id {
		t.Fatalf("ack for %q, sent %q", ack.ClientMsgID, id)
	}
	return ack.Message
}

// 3. Chat through the gateway Service: every service in its pod takes part
// (gateway: HTTP and WebSocket; logic: sends; repo: storage and history;
// task: delivery through Kafka).
func testChat(t *testing.T) {
	base := gatewayURL(t)
	alice, bob, carol := tc.Register(t, base, uniq("alice")), tc.Register(t, base, uniq("bob")), tc.Register(t, base, uniq("carol"))
	wa, wb, wc := tc.DialWS(t, wsURL(base), alice.Token), tc.DialWS(t, wsURL(base), bob.Token), tc.DialWS(t, wsURL(base), carol.Token)

	// Direct chat, live.
	var dm conversation
	alice.Must(t, http.MethodPost, "/v1/conversations/direct", map[string]string{"user_id": bob.User.ID}, &dm)
	sent := send(t, wa, dm.ID, "d1", "hello bob")
	got := wb.Messages(t, 1, wait)[0]
	if got.ConversationID != dm.ID || got.Seq != sent.Seq || got.Content != "hello bob" {
		t.Fatalf("bob got %+v, alice sent %+v", got, sent)
	}

	// A group: everyone gets everyone else's messages.
	var g conversation
	if st := alice.Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": uniq("g"), "member_ids": []string{bob.User.ID, carol.User.ID}}, &g); st != http.StatusCreated {
		t.Fatalf("create group: status %d", st)
	}
	for i, w := range []*tc.WS{wa, wb, wc} {
		send(t, w, g.ID, fmt.Sprint("g", i), fmt.Sprint("group message ", i))
	}
	for i, w := range []*tc.WS{wa, wb, wc} {
		seen := map[int64]bool{}
		deadline := time.Now().Add(wait)
		for len(seen) < 2 && time.Now().Before(deadline) {
			m := w.Messages(t, 1, wait)[0]
			if m.ConversationID == g.ID && m.SenderID != []string{alice.User.ID, bob.User.ID, carol.User.ID}[i] {
				seen[m.Seq] = true
			}
		}
		if len(seen) != 2 {
			t.Fatalf("member %d got %d of the 2 others' group messages", i, len(seen))
		}
	}

	// Offline sync: bob is away while alice sends, then pages through sync.
	wb.Close()
	for i := 0; i < 12; i++ {
		send(t, wa, dm.ID, fmt.Sprint("off", i), fmt.Sprint("missed ", i))
	}
	wb = tc.DialWS(t, wsURL(base), bob.Token)
	if err := wb.Send("sync", map[string]any{"conversation_id": dm.ID, "after_seq": sent.Seq, "limit": 8}); err != nil {
		t.Fatal(err)
	}
	var s1, s2 struct {
		Messages []message `json:"messages"`
		HasMore  bool      `json:"has_more"`
	}
	wb.Next(t, "sync", wait).Decode(t, &s1)
	if len(s1.Messages) != 8 || !s1.HasMore || s1.Messages[0].Seq != sent.Seq+1 {
		t.Fatalf("first sync page: %d messages, more %v", len(s1.Messages), s1.HasMore)
	}
	if err := wb.Send("sync", map[string]any{"conversation_id": dm.ID, "after_seq": s1.Messages[7].Seq}); err != nil {
		t.Fatal(err)
	}
	wb.Next(t, "sync", wait).Decode(t, &s2)
	if len(s2.Messages) != 4 || s2.HasMore || s2.Messages[3].Content != "missed 11" {
		t.Fatalf("second sync page: %+v", s2)
	}

	// History paging over HTTP, backwards then forwards: seqs 1..13, no gap.
	var back, older page
	bob.Must(t, http.MethodGet, fmt.Sprintf("/v1/conversations/%s/messages?before_seq=14&limit=5", dm.ID), nil, &back)
	if len(back.Messages) != 5 || !back.HasMore || back.Messages[4].Seq != 13 {
		t.Fatalf("newest page: %+v", back)
	}
	bob.Must(t, http.MethodGet, fmt.Sprintf("/v1/conversations/%s/messages?before_seq=%d&limit=100", dm.ID, back.Messages[0].Seq), nil, &older)
	if len(older.Messages) != 8 || older.HasMore || older.Messages[0].Seq != 1 {
		t.Fatalf("older page: %+v", older)
	}

	// Read receipts: bob reads up to 10; alice is told, and the unread count follows.
	if err := wb.Send("read", map[string]any{"conversation_id": dm.ID, "seq": 10}); err != nil {
		t.Fatal(err)
	}
	var rd struct {
		ConversationID string `json:"conversation_id"`
		UserID         string `json:"user_id"`
		Seq            *int64 `json:"seq"`
	}
	wa.Next(t, "read", wait).Decode(t, &rd)
	if rd.ConversationID != dm.ID || rd.UserID != bob.User.ID || rd.Seq == nil || *rd.Seq != 10 {
		t.Fatalf("read frame %+v", rd)
	}
	var c conversation
	bob.Must(t, http.MethodGet, "/v1/conversations/"+dm.ID, nil, &c)
	if c.MaxSeq != 13 || c.ReadSeq != 10 || c.Unread != 3 {
		t.Fatalf("bob's view after reading to 10: %+v", c)
	}
}

// gatewayPods are the Ready gateway pods' names.
func gatewayPods(t *testing.T) []string {
	out := utils.Kubectl().Must(t, "-n", appNS, "get", "pods", "-l", "app.kubernetes.io/instance="+cluster+",app.kubernetes.io/component=gateway",
		"-o", `jsonpath={range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
	var ready []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == "True" {
			ready = append(ready, f[0])
		}
	}
	return ready
}

// 4. kubectl scale: three Ready gateways, and clients spread over them
// (one port-forward per pod) still get every message across gateways.
func testScale(t *testing.T) {
	k := utils.Kubectl()
	k.Must(t, "-n", appNS, "scale", "chat", cluster, "--replicas=3")
	utils.Eventually(t, 3*time.Minute, "3 Ready gateways", func() error {
		if p := gatewayPods(t); len(p) != 3 {
			return fmt.Errorf("ready gateways %v", p)
		}
		if g := k.Must(t, "-n", appNS, "get", "chat", cluster, "-o", "jsonpath={.status.gatewaysReady}"); g != "3/3" {
			return fmt.Errorf("status.gatewaysReady %q", g)
		}
		return nil
	})
	waitPhase(t, "Running", 2*time.Minute)

	pods := gatewayPods(t)
	var users []*tc.API
	var conns []*tc.WS
	for i, p := range pods {
		base := "http://" + utils.PortForward(t, appNS, "pod/"+p, 8080)
		u := tc.Register(t, base, uniq(fmt.Sprint("s", i)))
		users = append(users, u)
		conns = append(conns, tc.DialWS(t, wsURL(base), u.Token))
	}
	var g conversation
	users[0].Must(t, http.MethodPost, "/v1/groups", map[string]any{"name": uniq("spread"), "member_ids": []string{users[1].User.ID, users[2].User.ID}}, &g)
	const each = 5
	acked := map[int64]string{}
	for r := 0; r < each; r++ {
		for i, w := range conns {
			m := send(t, w, g.ID, fmt.Sprintf("s%d-%d", i, r), "across gateways")
			acked[m.Seq] = users[i].User.ID
		}
	}
	// Every member receives every other member's message, counted by unique seq.
	for i, w := range conns {
		want := 0
		for _, sender := range acked {
			if sender != users[i].User.ID {
				want++
			}
		}
		seen := map[int64]bool{}
		deadline := time.Now().Add(wait)
		for len(seen) < want && time.Now().Before(deadline) {
			for _, m := range w.Messages(t, 1, time.Until(deadline)) {
				if m.ConversationID == g.ID && acked[m.Seq] != "" && acked[m.Seq] != users[i].User.ID {
					seen[m.Seq] = true
				}
			}
		}
		if len(seen) != want {
			t.Errorf("member on %s got %d of %d messages from the other gateways", pods[i], len(seen), want)
		}
	}

	// kubectl chat status through the API server's port-forward, as from a
	// machine outside the pod network: every gateway pod answers with its
	// live sessions (a client on each at least).
	plugin := filepath.Join(t.TempDir(), "kubectl-chat")
	build := exec.Command("go", "build", "-o", plugin, "./cmd/kubectl-chat")
	build.Dir = filepath.Join(repoRoot(), "operator")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-chat: %v\n%s", err, out)
	}
	out, err := exec.Command(plugin, "--port-forward", "-n", appNS, "status", cluster).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl chat status: %v\n%s", err, out)
	}
	for _, p := range pods {
		var row string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, p+" ") {
				row = line
			}
		}
		sessions := 0
		for _, f := range strings.Fields(row) {
			if n, err := strconv.Atoi(f); err == nil && n > sessions {
				sessions = n
			}
		}
		if row == "" || strings.Contains(row, "unreachable") || sessions < 1 {
			t.Errorf("kubectl chat status --port-forward: pod %s row %q, want its sessions\n%s", p, row, out)
		}
	}
}

func podTemplateAnnotation(t *testing.T, kind, name, key string) string {
	return utils.Kubectl().Must(t, "-n", appNS, "get", kind, name, "-o", "jsonpath={.spec.template.metadata.annotations['"+strings.ReplaceAll(key, ".", "\\.")+"']}")
}

// 6. Rotate the JWT Secret: the operator re-specifies every pod that reads
// it (gateway and logic carry the new secret hash); logic rolls, the
// gateways roll by the drain (preStop, grace and maxUnavailable as in
// scenario 5); logins and a WebSocket session work afterwards with a token
// signed by the new secret, and the ChatCluster is Running again.
func testSecretRotation(t *testing.T) {
	k := utils.Kubectl()
	const hashKey = "chat.gochat.io/secret-hash"
	workloads := [][2]string{{"statefulset", cluster + "-gateway"}, {"deployment", cluster + "-logic"}}
	before := map[string]string{}
	for _, w := range workloads {
		before[w[1]] = podTemplateAnnotation(t, w[0], w[1], hashKey)
		if before[w[1]] == "" {
			t.Fatalf("%s has no %s annotation", w[1], hashKey)
		}
	}
	watch := watchGateways(t, 3)
	old := watch.steady(t)
	user, peer := func() (*tc.API, *tc.API) {
		b, stop, err := utils.StartPortForward(appNS, "svc/"+cluster+"-gateway", 80)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		return tc.Register(t, "http://"+b, uniq("rot")), tc.Register(t, "http://"+b, uniq("rotpeer"))
	}()

	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	patch, _ := json.Marshal(map[string]any{"stringData": map[string]string{"secret": hex.EncodeToString(secret)}})
	k.Must(t, "-n", appNS, "patch", "secret", cluster+"-jwt", "--type=merge", "-p", string(patch))

	for _, w := range workloads {
		utils.Eventually(t, 2*time.Minute, w[1]+" template follows the new Secret", func() error {
			if h := podTemplateAnnotation(t, w[0], w[1], hashKey); h == before[w[1]] {
				return fmt.Errorf("%s still %q", hashKey, h)
			}
			return nil
		})
	}
	// Every pod runs the new template and is Ready: rolled, not just re-specified.
	k.Must(t, "-n", appNS, "rollout", "status", "deployment/"+cluster+"-logic", "--timeout=4m")
	watch.replaced(t, old, "", 5*time.Minute)
	waitRolled(t)
	for _, w := range [][2]string{{"logic", "deployment"}, {"gateway", "statefulset"}} {
		want := podTemplateAnnotation(t, w[1], cluster+"-"+w[0], hashKey)
		utils.Eventually(t, 2*time.Minute, w[0]+" pods on the new Secret", func() error {
			out := k.Must(t, "-n", appNS, "get", "pods", "-l", "app.kubernetes.io/instance="+cluster+",app.kubernetes.io/component="+w[0],
				"-o", `jsonpath={range .items[*]}{.metadata.annotations.chat\.gochat\.io/secret-hash}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if f := strings.Fields(line); len(f) != 2 || f[0] != want || f[1] != "True" {
					return fmt.Errorf("%s pods (hash, ready): %q", w[0], out)
				}
			}
			return nil
		})
	}

	// Login is answered by logic, which signs with the new secret; the
	// rolled gateways accept the new token.
	base := gatewayURL(t)
	anon := &tc.API{Base: base}
	var login struct {
		Token string `json:"token"`
	}
	utils.Eventually(t, wait, "login after rotation", func() error {
		_, err := anon.Do(http.MethodPost, "/v1/auth/login", map[string]string{"username": user.User.Username, "password": "password-" + user.User.Username}, &login)
		return err
	})
	if login.Token == "" || login.Token == user.Token {
		t.Fatalf("login after rotation gave token %q", login.Token)
	}
	fresh := &tc.API{Base: base, Token: login.Token}
	var dm conversation
	fresh.Must(t, http.MethodPost, "/v1/conversations/direct", map[string]string{"user_id": peer.User.ID}, &dm)
	w := tc.DialWS(t, wsURL(base), login.Token)
	if m := send(t, w, dm.ID, "after-rotation", "signed by the new secret"); m.Seq != 1 {
		t.Fatalf("first message after rotation has seq %d", m.Seq)
	}
}

// 7. Delete a repo pod and a task pod while clients send: every acked
// message is stored and delivered (by unique (conversation_id, seq)), and
// the ChatCluster reports Degraded, then Running.
func testFailure(t *testing.T) {
	k := utils.Kubectl()
	base := gatewayURL(t)
	const pairs = 3
	type pair struct {
		sender, receiver *tc.API
		ws, wr           *tc.WS
		conv             string
	}
	var ps []pair
	for i := 0; i < pairs; i++ {
		a, b := tc.Register(t, base, uniq("la")), tc.Register(t, base, uniq("lb"))
		var c conversation
		a.Must(t, http.MethodPost, "/v1/conversations/direct", map[string]string{"user_id": b.User.ID}, &c)
		ps = append(ps, pair{a, b, tc.DialWS(t, wsURL(base), a.Token), tc.DialWS(t, wsURL(base), b.Token), c.ID})
	}

	// Watch the phase for the whole scenario.
	ctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	phases, err := k.Lines(ctx, "-n", appNS, "get", "chat", cluster, "--watch", "-o", "jsonpath={.status.phase}{\"\\n\"}")
	if err != nil {
		t.Fatal(err)
	}
	var seenPhases []string

	// Load: each sender sends one message at a time, waiting for its ack or
	// error; only acked messages count.
	type key struct {
		conv string
		seq  int64
	}
	var mu sync.Mutex
	acked := map[key]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("load%d-%d", i, n)
				if err := p.ws.Send("send", map[string]any{"client_msg_id": id, "conversation_id": p.conv, "content": id}); err != nil {
					return
				}
				// Its ack or an error; other frames (presence, typing) are
				// not answers and are skipped.
				deadline := time.Now().Add(20 * time.Second)
				for {
					f, ok := p.ws.Wait("", time.Until(deadline))
					if !ok {
						break
					}
					if f.Type == "ack" {
						var ack struct {
							ClientMsgID string  `json:"client_msg_id"`
							Message     message `json:"message"`
						}
						if json.Unmarshal(f.Data, &ack) == nil && ack.ClientMsgID == id {
							mu.Lock()
							acked[key{p.conv, ack.Message.Seq}] = true
							mu.Unlock()
							break
						}
					} else if f.Type == "error" {
						time.Sleep(100 * time.Millisecond) // the backend is away
						break
					}
				}
			}
		}()
	}
	time.Sleep(3 * time.Second)
	deleted := map[string]string{}
	for _, comp := range []string{"repo", "task"} {
		pods := strings.Fields(k.Must(t, "-n", appNS, "get", "pods", "-l", "app.kubernetes.io/instance="+cluster+",app.kubernetes.io/component="+comp, "-o", "jsonpath={.items[0].metadata.name}"))
		if len(pods) != 1 {
			t.Fatalf("no %s pod", comp)
		}
		k.Must(t, "-n", appNS, "delete", "pod", pods[0], "--wait=false")
		deleted[comp] = pods[0]
	}
	// Keep sending until the replacements are Ready and the cluster is
	// Running again.
	utils.Eventually(t, 3*time.Minute, "replacement pods Ready, ChatCluster Running", func() error {
		for comp, gone := range deleted {
			out := k.Must(t, "-n", appNS, "get", "pods", "-l", "app.kubernetes.io/instance="+cluster+",app.kubernetes.io/component="+comp,
				"-o", `jsonpath={range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 {
				return fmt.Errorf("%s pods: %q", comp, out)
			}
			for _, line := range lines {
				if f := strings.Fields(line); len(f) != 2 || f[0] == gone || f[1] != "True" {
					return fmt.Errorf("%s pods (name, ready): %q", comp, out)
				}
			}
		}
		for {
			select {
			case p, ok := <-phases:
				if ok && (len(seenPhases) == 0 || seenPhases[len(seenPhases)-1] != p) {
					seenPhases = append(seenPhases, p)
				}
				if ok {
					continue
				}
			default:
			}
			break
		}
		if p := phase(t); p != "Running" {
			return fmt.Errorf("phase %q", p)
		}
		return nil
	})
	// The contract: Degraded while a pod is missing (Ready pods lost), then
	// Running once the replacements are Ready.
	degraded := false
	for _, p := range seenPhases {
		degraded = degraded || p == "Degraded"
	}
	t.Logf("phases seen: %v", seenPhases)
	if !degraded {
		t.Errorf("the ChatCluster never reported Degraded while repo and task pods were missing (phases %v)", seenPhases)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	stopWatch()
	t.Logf("%d messages acked under load", len(acked))
	if len(acked) == 0 {
		t.Fatal("nothing was acked under load")
	}

	// Every acked message is stored, and reaches its receiver live.
	for _, p := range ps {
		stored := map[int64]bool{}
		for after, more := int64(0), true; more; {
			var h page
			p.receiver.Must(t, http.MethodGet, fmt.Sprintf("/v1/conversations/%s/messages?after_seq=%d&limit=200", p.conv, after), nil, &h)
			for _, m := range h.Messages {
				stored[m.Seq] = true
				after = m.Seq
			}
			more = h.HasMore && len(h.Messages) > 0
		}
		want := 0
		for kk := range acked {
			if kk.conv != p.conv {
				continue
			}
			want++
			if !stored[kk.seq] {
				t.Errorf("acked (%s, %d) is not in the history", kk.conv, kk.seq)
			}
		}
		got := map[int64]bool{}
		deadline := time.Now().Add(time.Minute)
		for len(got) < want && time.Now().Before(deadline) {
			f, ok := p.wr.Wait("message", time.Until(deadline))
			if !ok {
				break
			}
			var m message
			if json.Unmarshal(f.Data, &m) == nil && acked[key{m.ConversationID, m.Seq}] {
				got[m.Seq] = true
			}
		}
		if len(got) != want {
			t.Errorf("conversation %s: receiver got %d of %d acked messages", p.conv, len(got), want)
		}
	}
}

// 8. Delete the ChatClusters: the second one (deleteTopicsOnDelete) takes
// its topics with it; the first one's objects all go, its topics stay
// (deleteTopicsOnDelete is off), and helm uninstall keeps the CRD.
func testTeardown(t *testing.T) {
	k := utils.Kubectl()
	testScratch(t)
	topicsBefore := topics(t)
	var status struct {
		Kafka struct {
			Topics []string `json:"topics"`
		} `json:"kafka"`
	}
	if err := json.Unmarshal([]byte(k.Must(t, "-n", appNS, "get", "chat", cluster, "-o", "jsonpath={.status}")), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Kafka.Topics) == 0 {
		t.Fatal("status lists no topics")
	}
	for _, tp := range status.Kafka.Topics {
		if !topicsBefore[tp] {
			t.Fatalf("status topic %s is not on the broker (%v)", tp, topicsBefore)
		}
	}
	k.Must(t, "-n", appNS, "delete", "chat", cluster, "--timeout=3m")
	utils.Eventually(t, 2*time.Minute, "owned objects gone", func() error {
		out := k.Must(t, "-n", appNS, "get", "deployments,statefulsets,services,configmaps,secrets,jobs,serviceaccounts,poddisruptionbudgets",
			"-l", "app.kubernetes.io/instance="+cluster, "-o", "name")
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("left: %s", out)
		}
		return nil
	})
	after := topics(t)
	for _, tp := range status.Kafka.Topics {
		if !after[tp] {
			t.Errorf("topic %s was deleted though deleteTopicsOnDelete is off", tp)
		}
	}

	utils.Helm().Must(t, "uninstall", release, "--namespace", operatorNS, "--wait")
	k.Must(t, "get", "crd", "chatclusters.chat.gochat.io")
	for _, ns := range []string{appNS, operatorNS} {
		k.Must(t, "delete", "namespace", ns, "--wait=false")
	}
}

// testScratch: the second cluster's migration failed on the wrong password,
// and its condition carries the failed pod's log; with the Secret fixed the
// migration runs again and succeeds; deleting the cluster (with
// deleteTopicsOnDelete) deletes its topics and leaves the other cluster's.
func testScratch(t *testing.T) {
	k := utils.Kubectl()
	utils.Eventually(t, 6*time.Minute, "scratch: the failed migration reported with its log", func() error {
		st, reason, msg := chatCondition(t, scratch, "DatabaseMigrated")
		if st != "False" || reason != "MigrationFailed" || !strings.Contains(msg, "Access denied") {
			return fmt.Errorf("DatabaseMigrated %s/%s: %s", st, reason, msg)
		}
		return nil
	})
	if st, reason, msg := chatCondition(t, scratch, "DatabaseReachable"); st != "False" || reason != "AccessDenied" {
		t.Errorf("scratch DatabaseReachable %s/%s (%s), want False/AccessDenied", st, reason, msg)
	}
	_, _, msg := chatCondition(t, scratch, "DatabaseMigrated")
	if strings.Contains(msg, "not-the-password") {
		t.Errorf("the DSN's password is in the condition: %s", msg)
	}
	// Nothing rolls ahead of a migration that has not succeeded.
	if out := strings.TrimSpace(k.Must(t, "-n", appNS, "get", "deployments,statefulsets", "-l", "app.kubernetes.io/instance="+scratch, "-o", "name")); out != "" {
		t.Errorf("workloads created before the migration succeeded: %s", out)
	}
	var scratchTopics []string
	utils.Eventually(t, 2*time.Minute, "scratch: its topics", func() error {
		scratchTopics = strings.Fields(k.Must(t, "-n", appNS, "get", "chat", scratch, "-o", "jsonpath={.status.kafka.topics[*]}"))
		if len(scratchTopics) == 0 {
			return fmt.Errorf("no topics in status")
		}
		return nil
	})

	utils.Apply(t, `apiVersion: v1
kind: Secret
metadata: {name: scratch-mysql, namespace: `+appNS+`}
stringData: {dsn: "gochat:gochat@tcp(mysql.`+backendsNS+`.svc:3306)/gochat"}`)
	utils.Eventually(t, 3*time.Minute, "scratch: migrated after the Secret fix", func() error {
		if st, reason, msg := chatCondition(t, scratch, "DatabaseMigrated"); st != "True" {
			return fmt.Errorf("DatabaseMigrated %s/%s: %s", st, reason, msg)
		}
		return nil
	})

	onBroker := topics(t)
	for _, tp := range scratchTopics {
		if !onBroker[tp] {
			t.Fatalf("scratch topic %s is not on the broker", tp)
		}
	}
	k.Must(t, "-n", appNS, "delete", "chat", scratch, "--timeout=3m")
	utils.Eventually(t, time.Minute, "scratch's topics deleted with it", func() error {
		after := topics(t)
		for _, tp := range scratchTopics {
			if after[tp] {
				return fmt.Errorf("topic %s is still on the broker", tp)
			}
		}
		return nil
	})
}

// topics lists the broker's topics. The broker listens on its pod IP only
// (it advertises the address it binds), so a port-forward, which dials the
// pod's loopback, cannot reach it: the suite dials the pod IP, which the
// local cluster routes from the host (on kind, run the suite where pod IPs
// are reachable, e.g. inside the kind node's network).
func topics(t *testing.T) map[string]bool {
	t.Helper()
	ip := strings.TrimSpace(utils.Kubectl().Must(t, "-n", appNS, "get", "pods", "-l", "app=kafka", "-o", "jsonpath={.items[0].status.podIP}"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(net.JoinHostPort(ip, "9092")))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	td, err := kadm.NewClient(cl).ListTopics(ctx)
	if err != nil {
		t.Fatalf("list topics on the broker at pod IP %s: %v", ip, err)
	}
	out := map[string]bool{}
	for _, name := range td.Names() {
		out[name] = true
	}
	return out
}
