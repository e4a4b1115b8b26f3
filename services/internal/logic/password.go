package logic

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"

	"github.com/gochat/gochat/services/internal/apierror"
)

// argon2id with OWASP's minimum parameters (19 MiB, 2 passes): costly for an
// attacker, affordable for a login endpoint on a small pod.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
)

var b64 = base64.RawStdEncoding

// hashSlots bounds the argon2id computations running at once: each takes
// 19 MiB, so a burst of logins must queue, not exhaust the pod's memory.
var hashSlots = make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))

// maxArgonMemoryKiB refuses stored hashes that would make one check take
// more than 64 MiB.
const maxArgonMemoryKiB = 64 * 1024

// withHashSlot runs fn once a hashing slot is free; a caller that gives up
// waiting gets unavailable.
func withHashSlot(ctx context.Context, fn func()) error {
	select {
	case hashSlots <- struct{}{}:
	case <-ctx.Done():
		return apierror.New(apierror.Unavailable, "too many logins in progress, try again")
	}
	defer func() { <-hashSlots }()
	fn()
	return nil
}

func hashPassword(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

var errBadHash = errors.New("unrecognised password hash")

// checkPassword compares in constant time, with the parameters stored in the hash.
func checkPassword(encoded, password string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var (
		version, mem int
		t            uint32
		p            uint8
	)
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &mem, &t, &p); err != nil || mem <= 0 || mem > maxArgonMemoryKiB || t == 0 || t > 10 || p == 0 {
		return false, errBadHash
	}
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(password), salt, t, uint32(mem), p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// dummyHash is checked against when a username does not exist, so a wrong
// username takes as long as a wrong password. It is made on first use, not
// at package init: every service is built into one binary, and an argon2
// hash at init left each process (a gateway too) with about 19 MiB of freed
// heap it had never needed.
var dummyHash = sync.OnceValue(func() string {
	h, _ := hashPassword("not-a-real-password")
	return h
})
