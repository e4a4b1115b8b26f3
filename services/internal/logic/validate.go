package logic

import (
	"regexp"
	"unicode/utf8"

	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/ids"
)

var (
	usernameRe    = regexp.MustCompile(`^[a-z0-9_.-]{3,32}$`)
	contentTypeRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.+/-]{0,31}$`)
)

const (
	minPassword     = 8
	maxPassword     = 256
	maxNickname     = 64
	maxGroupName    = 128
	maxClientMsgID  = 64
	maxIDsPerChange = 500
)

func invalid(format string, args ...any) error {
	return apierror.New(apierror.InvalidArgument, format, args...)
}

func validateUsername(u string) error {
	if !usernameRe.MatchString(u) {
		return invalid("username must be 3 to 32 characters of a-z, 0-9, '_', '.' and '-'")
	}
	return nil
}

func validatePassword(p string) error {
	if len(p) < minPassword {
		return invalid("password must be at least %d characters", minPassword)
	}
	if len(p) > maxPassword {
		return invalid("password must be at most %d bytes", maxPassword)
	}
	return nil
}

func validateText(field, v string, maxRunes int, required bool) error {
	if required && v == "" {
		return invalid("%s is required", field)
	}
	if !utf8.ValidString(v) {
		return invalid("%s is not valid UTF-8", field)
	}
	if n := utf8.RuneCountInString(v); n > maxRunes {
		return invalid("%s is %d characters, at most %d are allowed", field, n, maxRunes)
	}
	return nil
}

// validateUserIDs checks a list of user ids from a client. An id that cannot
// exist is reported as not found, like one that does not.
func validateUserIDs(field string, v []string, allowEmpty bool) error {
	if len(v) == 0 && !allowEmpty {
		return invalid("%s must name at least one user", field)
	}
	if len(v) > maxIDsPerChange {
		return invalid("%s names %d users, at most %d are allowed in one call", field, len(v), maxIDsPerChange)
	}
	for _, id := range v {
		if !ids.Valid(id) {
			return apierror.New(apierror.NotFound, "user %q not found", id)
		}
	}
	return nil
}

func validateSend(clientMsgID, contentType, content string, maxContent int) error {
	if clientMsgID == "" {
		return invalid("client_msg_id is required")
	}
	if len(clientMsgID) > maxClientMsgID {
		return invalid("client_msg_id is %d bytes, at most %d are allowed", len(clientMsgID), maxClientMsgID)
	}
	if !contentTypeRe.MatchString(contentType) {
		return invalid("content_type must be a short lowercase token such as text, image or file")
	}
	if content == "" {
		return invalid("content is required")
	}
	if len(content) > maxContent {
		return apierror.New(apierror.PayloadTooLarge, "content is %d bytes, at most %d are allowed", len(content), maxContent)
	}
	if !utf8.ValidString(content) {
		return invalid("content is not valid UTF-8")
	}
	return nil
}
