package comet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	cmtcfg "github.com/cometbft/cometbft/config"
	sm "github.com/cometbft/cometbft/state"
)

// StateHeight is the height of the last block CometBFT's state store (data/state.db)
// records as applied, read with the node stopped, before the node opens it. The app
// has committed that block, and at most one more: CometBFT saves its state after the
// app's Commit. A home with no state store yet (a fresh node) is height 0.
//
// It is what the boot of a node with an upgrade scheduled at a height asks: a node
// at H-1 cannot go on with the old binary (the SDK's halt-height stops it at H), so
// the boot switches it before the app is built.
func StateHeight(cfg *cmtcfg.Config) (int64, error) {
	if _, err := os.Stat(filepath.Join(cfg.DBDir(), "state.db")); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	db, err := cmtcfg.DefaultDBProvider(&cmtcfg.DBContext{ID: "state", Config: cfg})
	if err != nil {
		return 0, fmt.Errorf("comet: open CometBFT's state store in %s: %w", cfg.DBDir(), err)
	}
	defer db.Close()
	st, err := sm.NewStore(db, sm.StoreOptions{}).Load()
	if err != nil {
		return 0, fmt.Errorf("comet: read CometBFT's state store in %s: %w", cfg.DBDir(), err)
	}
	return st.LastBlockHeight, nil
}
