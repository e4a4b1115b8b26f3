package rpc

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gochat/gochat/api/pki"
)

func only(cs ...pki.Component) []pki.Component { return cs }

// Authorization is who may call what: full method ("/pkg.Service/Method") or
// whole service ("/pkg.Service/") -> the components allowed. A method entry
// wins over its service's entry; a call that matches neither is refused, so
// a new RPC is closed until it is added here. It follows what calls what
// in the code (launch/ and the clients), and docs/architecture.md shows it.
var Authorization = map[string][]pki.Component{
	// Gateways: im-task pushes frames to sessions, and gateways relay
	// ephemeral frames to each other (the Push handler refuses a gateway
	// anything but typing and presence frames); only the operator and a
	// person holding the admin credential read stats or drain.
	"/gochat.v1.PushService/Push":          only(pki.Task, pki.Gateway),
	"/gochat.v1.GatewayAdminService/Stats": only(pki.Operator, pki.Admin),
	"/gochat.v1.GatewayAdminService/Drain": only(pki.Operator, pki.Admin),
	// im-logic trusts caller_id, which only the gateway sets, after it has
	// verified the client's token.
	"/gochat.v1.LogicService/": only(pki.Gateway),
	// im-repo: password hashes and the write path belong to im-logic; the
	// gateway registers its sessions; im-task reads members, presence and
	// messages for pushes and notifications.
	"/gochat.v1.RepoService/CreateUser":         only(pki.Logic),
	"/gochat.v1.RepoService/GetUser":            only(pki.Logic),
	"/gochat.v1.RepoService/GetCredentials":     only(pki.Logic),
	"/gochat.v1.RepoService/GetOrCreateDirect":  only(pki.Logic),
	"/gochat.v1.RepoService/CreateGroup":        only(pki.Logic),
	"/gochat.v1.RepoService/AddMembers":         only(pki.Logic),
	"/gochat.v1.RepoService/RemoveMember":       only(pki.Logic),
	"/gochat.v1.RepoService/GetConversation":    only(pki.Logic),
	"/gochat.v1.RepoService/ListConversations":  only(pki.Logic),
	"/gochat.v1.RepoService/StoreMessage":       only(pki.Logic),
	"/gochat.v1.RepoService/StoreMessages":      only(pki.Logic),
	"/gochat.v1.RepoService/UpdateReadSeq":      only(pki.Logic),
	"/gochat.v1.RepoService/AckDispatched":      only(pki.Logic),
	"/gochat.v1.RepoService/ListUndispatched":   only(pki.Logic),
	"/gochat.v1.RepoService/GetMembers":         only(pki.Logic, pki.Task, pki.Gateway),
	"/gochat.v1.RepoService/ListMessages":       only(pki.Logic, pki.Task),
	"/gochat.v1.RepoService/UnreadCounts":       only(pki.Task),
	"/gochat.v1.RepoService/GetPresence":        only(pki.Task, pki.Gateway),
	"/gochat.v1.RepoService/GetPresenceChanges": only(pki.Task),
	"/gochat.v1.RepoService/ListContacts":       only(pki.Gateway),
	"/gochat.v1.RepoService/ListContactsBatch":  only(pki.Gateway),
	"/gochat.v1.RepoService/RegisterSessions":   only(pki.Gateway),
	"/gochat.v1.RepoService/UnregisterSessions": only(pki.Gateway, pki.Task),
	"/gochat.v1.RepoService/GatewayAlive":       only(pki.Gateway),
	// Health needs a trusted certificate like everything else; the pods'
	// probes are HTTP on the metrics port (kubelet gRPC probes cannot do TLS).
	"/grpc.health.v1.Health/": pki.Components,
}

// allowed is the list of components that may call fullMethod, and whether
// the table names it at all.
func allowed(table map[string][]pki.Component, fullMethod string) ([]pki.Component, bool) {
	if cs, ok := table[fullMethod]; ok {
		return cs, true
	}
	if i := strings.LastIndex(fullMethod, "/"); i > 0 {
		if cs, ok := table[fullMethod[:i+1]]; ok {
			return cs, true
		}
	}
	return nil, false
}

// authorize answers Unauthenticated for a caller without a trusted
// certificate and PermissionDenied for a trusted one the table does not
// allow. A nil identity means plaintext (--insecure-internal): nothing to check.
func authorize(ctx context.Context, id *Identity, table map[string][]pki.Component, fullMethod string) error {
	if id == nil {
		return nil
	}
	caller, err := callerOf(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "mutual TLS required: %v", err)
	}
	cs, _ := allowed(table, fullMethod)
	for _, c := range cs {
		if c == caller {
			return nil
		}
	}
	return status.Errorf(codes.PermissionDenied, "%s may not call %s", caller, fullMethod)
}

func authUnary(id *Identity, table map[string][]pki.Component) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := authorize(ctx, id, table, info.FullMethod); err != nil {
			denied.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
			return nil, err
		}
		return handler(ctx, req)
	}
}

func authStream(id *Identity, table map[string][]pki.Component) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := authorize(ss.Context(), id, table, info.FullMethod); err != nil {
			denied.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
			return err
		}
		return handler(srv, ss)
	}
}
