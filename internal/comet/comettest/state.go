package comettest

import (
	"testing"

	cmtcfg "github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/crypto/ed25519"
	sm "github.com/cometbft/cometbft/state"
	"github.com/cometbft/cometbft/types"
)

// SaveState writes, with CometBFT's own state store (data/state.db of cfg's
// home, opened as a node opens it), the state of a one-validator chain whose last
// applied block is height (built as CometBFT's state tests build it), as a
// stopped node leaves it, and closes the store. Height 0 is a genesis state.
func SaveState(t testing.TB, cfg *cmtcfg.Config, height int64) {
	t.Helper()
	db, err := cmtcfg.DefaultDBProvider(&cmtcfg.DBContext{ID: "state", Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	store := sm.NewStore(db, sm.StoreOptions{})
	defer store.Close()
	pk := ed25519.GenPrivKeyFromSecret([]byte("comettest"))
	st, err := sm.MakeGenesisState(&types.GenesisDoc{
		ChainID:    "comettest",
		Validators: []types.GenesisValidator{{Address: pk.PubKey().Address(), PubKey: pk.PubKey(), Power: 10, Name: "v0"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Save(st); err != nil {
		t.Fatal(err)
	}
	if height > 0 {
		st.LastBlockHeight, st.LastValidators = height, st.Validators.Copy()
		if err := store.Save(st); err != nil {
			t.Fatal(err)
		}
	}
}
