package relauncher

import (
	"errors"
	"testing"
)

func TestParseUpgradeInfo(t *testing.T) {
	tests := []struct {
		in      string
		want    UpgradeInfo
		wantErr bool
	}{
		{`{"name":"v2","height":123,"info":"x"}`, UpgradeInfo{"v2", 123, "x"}, false},
		{`{"name":"v2","time":"0001-01-01T00:00:00Z","height":"77"}`, UpgradeInfo{"v2", 77, ""}, false},
		{`{"name":"v2"}`, UpgradeInfo{"v2", 0, ""}, false},
		{`{"name":"v2","height":null}`, UpgradeInfo{"v2", 0, ""}, false},
		{`{"name":"","height":1}`, UpgradeInfo{}, true},
		{`{"name":"..","height":1}`, UpgradeInfo{}, true},
		{`{"name":"a\u0000b","height":1}`, UpgradeInfo{}, true},
		{`{"name":"v2","height":-1}`, UpgradeInfo{}, true},
		{`{"name":"v2","height":1.5}`, UpgradeInfo{}, true},
		{`{"name":"v2","height":"x"}`, UpgradeInfo{}, true},
		{`{"name":"v2"} {"name":"v3"}`, UpgradeInfo{}, true},
		{`[]`, UpgradeInfo{}, true},
		{`{"name":`, UpgradeInfo{}, true},
	}
	for _, tc := range tests {
		got, err := ParseUpgradeInfo([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err = %v", tc.in, err)
			continue
		}
		if err != nil && !errors.Is(err, ErrMalformedUpgradeInfo) {
			t.Errorf("%s: err %v not ErrMalformedUpgradeInfo", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("%s: got %+v", tc.in, got)
		}
	}
}

func FuzzParseUpgradeInfo(f *testing.F) {
	for _, s := range []string{`{"name":"v2","height":123,"info":"x"}`, `{"name":"v2","height":"1"}`, `{}`, ``, `{"name":".."}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ui, err := ParseUpgradeInfo(b)
		if err != nil {
			if !errors.Is(err, ErrMalformedUpgradeInfo) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		if validUpgradeName(ui.Name) != nil || ui.Height < 0 {
			t.Fatalf("accepted %+v", ui)
		}
	})
}
