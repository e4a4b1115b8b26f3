package logic

import (
	"strings"
	"testing"

	"github.com/gochat/gochat/services/internal/apierror"
)

func TestValidateUsername(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"abc", true}, {"a.b-c_9", true}, {strings.Repeat("a", 32), true},
		{"ab", false}, {strings.Repeat("a", 33), false}, {"Abc", false}, {"a b", false}, {"ünï", false}, {"", false},
	}
	for _, tt := range tests {
		if err := validateUsername(tt.in); (err == nil) != tt.ok {
			t.Errorf("validateUsername(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
	}
}

func TestValidateSend(t *testing.T) {
	tests := []struct {
		name                 string
		cmid, ctype, content string
		wantCode             apierror.Code
	}{
		{"ok", "c1", "text", "hi", ""},
		{"custom type", "c1", "image/png", "opaque", ""},
		{"no client_msg_id", "", "text", "hi", apierror.InvalidArgument},
		{"long client_msg_id", strings.Repeat("x", 65), "text", "hi", apierror.InvalidArgument},
		{"bad type", "c1", "Text!", "hi", apierror.InvalidArgument},
		{"empty content", "c1", "text", "", apierror.InvalidArgument},
		{"too large", "c1", "text", strings.Repeat("x", 4097), apierror.PayloadTooLarge},
		{"exactly the limit", "c1", "text", strings.Repeat("x", 4096), ""},
		{"invalid utf-8", "c1", "text", "\xff\xfe", apierror.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateSend(tt.cmid, tt.ctype, tt.content, 4096)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if got := apierror.From(err); got == nil || got.Code != tt.wantCode {
				t.Fatalf("error %v, want %s", err, tt.wantCode)
			}
		})
	}
}

func TestPassword(t *testing.T) {
	h, err := hashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := hashPassword("correct horse")
	if h == h2 {
		t.Fatal("two hashes of one password are equal: the salt is not random")
	}
	tests := []struct {
		hash, pw string
		ok       bool
		err      bool
	}{
		{h, "correct horse", true, false},
		{h, "correct horsE", false, false},
		{h, "", false, false},
		{"$2a$10$bcrypt", "x", false, true},
		{"$argon2id$v=19$m=x$a$b", "x", false, true},
	}
	for _, tt := range tests {
		ok, err := checkPassword(tt.hash, tt.pw)
		if ok != tt.ok || (err != nil) != tt.err {
			t.Errorf("checkPassword(%.20q, %q) = %v, %v", tt.hash, tt.pw, ok, err)
		}
	}
}
