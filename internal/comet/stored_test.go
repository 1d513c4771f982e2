package comet

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cmtcfg "github.com/cometbft/cometbft/config"
	sm "github.com/cometbft/cometbft/state"

	"github.com/invisor/invisor/internal/comet/comettest"
)

// storeConfig is CometBFT's default configuration rooted in a fresh directory.
func storeConfig(t *testing.T) *cmtcfg.Config {
	t.Helper()
	return cmtcfg.DefaultConfig().SetRoot(t.TempDir())
}

// openStateDB opens data/state.db as the node does (CometBFT's DB provider and
// the configured backend).
func openStateDB(t *testing.T, cfg *cmtcfg.Config) sm.Store {
	t.Helper()
	db, err := cmtcfg.DefaultDBProvider(&cmtcfg.DBContext{ID: "state", Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return sm.NewStore(db, sm.StoreOptions{})
}

func TestStateHeightReadsCometBFTsStateStore(t *testing.T) {
	for _, h := range []int64{0, 1, 49, 1_234_567} {
		cfg := storeConfig(t)
		comettest.SaveState(t, cfg, h)
		got, err := StateHeight(cfg)
		if err != nil || got != h {
			t.Fatalf("state saved at %d: StateHeight = %d, %v", h, got, err)
		}
		// The store is closed again: the node that starts next can open it.
		s := openStateDB(t, cfg)
		if st, err := s.Load(); err != nil || st.LastBlockHeight != h {
			t.Fatalf("state store after StateHeight: %d, %v", st.LastBlockHeight, err)
		}
		s.Close()
	}
}

// A fresh home (CometBFT never ran): height 0, and nothing is created, so a
// command run before `init` or the first start leaves the home as it was.
func TestStateHeightOfAFreshHome(t *testing.T) {
	cfg := storeConfig(t)
	if h, err := StateHeight(cfg); err != nil || h != 0 {
		t.Fatalf("StateHeight = %d, %v", h, err)
	}
	if _, err := os.Stat(cfg.DBDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s created (%v)", cfg.DBDir(), err)
	}
	// The data directory exists (init made it) but holds no state store yet.
	if err := os.MkdirAll(cfg.DBDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if h, err := StateHeight(cfg); err != nil || h != 0 {
		t.Fatalf("empty data dir: StateHeight = %d, %v", h, err)
	}
	if ents, _ := os.ReadDir(cfg.DBDir()); len(ents) != 0 {
		t.Fatalf("StateHeight created %v", ents)
	}
	// A state store CometBFT created but wrote no state into: height 0.
	openStateDB(t, cfg).Close()
	if h, err := StateHeight(cfg); err != nil || h != 0 {
		t.Fatalf("empty state store: StateHeight = %d, %v", h, err)
	}
}

// A state store held open (a running node holds its lock) or not a database is
// an error naming the store, never a height.
func TestStateHeightErrors(t *testing.T) {
	t.Run("held open", func(t *testing.T) {
		cfg := storeConfig(t)
		comettest.SaveState(t, cfg, 7)
		s := openStateDB(t, cfg)
		defer s.Close()
		h, err := StateHeight(cfg)
		if err == nil || !strings.Contains(err.Error(), "open CometBFT's state store in "+cfg.DBDir()) {
			t.Fatalf("StateHeight with the store held open = %d, %v", h, err)
		}
	})
	t.Run("not a database", func(t *testing.T) {
		cfg := storeConfig(t)
		if err := os.MkdirAll(cfg.DBDir(), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg.DBDir(), "state.db"), []byte("not leveldb"), 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := StateHeight(cfg)
		if err == nil || !strings.Contains(err.Error(), cfg.DBDir()) {
			t.Fatalf("StateHeight on a file = %d, %v", h, err)
		}
	})
}
