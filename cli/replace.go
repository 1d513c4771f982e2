package cli

import (
	"context"
	"errors"
	"time"
)

// stageReplace puts a patch release of upgrade name in place (stage --replace).
func stageReplace(ctx context.Context, e *env, name, src string, fileSource bool, wait time.Duration) error {
	return errors.New("stage --replace: not built yet")
}
