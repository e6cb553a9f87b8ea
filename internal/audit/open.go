package audit

import (
	"context"
	"errors"
	"net/url"
	"strings"
)

// IsPostgres reports whether a store location names PostgreSQL.
func IsPostgres(location string) bool {
	return strings.HasPrefix(location, "postgres://") || strings.HasPrefix(location, "postgresql://")
}

// OpenStore opens the store at location: a postgres:// connection string
// (with password, if not in the string or the environment) or a
// directory, optionally file://. Read-only opens a file store without
// taking its lock, to read it beside the server that writes it.
func OpenStore(ctx context.Context, location, password string, readOnly bool) (Store, error) {
	if IsPostgres(location) {
		return OpenPostgresStore(ctx, location, password)
	}
	dir := strings.TrimPrefix(location, "file://")
	if readOnly {
		return OpenFileStoreReadOnly(dir)
	}
	return OpenFileStore(dir)
}

// WithPassword returns dsn with its password replaced.
func WithPassword(dsn, password string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return "", errors.New("the PostgreSQL connection string must be a URL naming its user")
	}
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String(), nil
}
