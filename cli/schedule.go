package cli

import (
	"context"
	"errors"
)

// stageAtHeight schedules upgrade name at height without governance (stage --height).
func stageAtHeight(ctx context.Context, e *env, name string, height int64, src string, fileSource bool) error {
	return errors.New("stage --height: not built yet")
}

// stageBatch schedules the upgrades of a cosmovisor batch file (stage --batch).
func stageBatch(ctx context.Context, e *env, path string) error {
	return errors.New("stage --batch: not built yet")
}
