package home

import (
	"errors"
	"testing"
)

// The cases the relauncher and staging rely on.
func TestParseUpgradeInfo(t *testing.T) {
	tests := []struct {
		in      string
		want    Plan
		wantErr bool
	}{
		{`{"name":"v2","height":123,"info":"x"}`, Plan{Name: "v2", Height: 123, Info: "x"}, false},
		{`{"name":"v2","time":"0001-01-01T00:00:00Z","height":"77"}`, Plan{Name: "v2", Height: 77}, false},
		{`{"name":"v2"}`, Plan{Name: "v2"}, false},
		{`{"name":"v2","height":null}`, Plan{Name: "v2"}, false},
		// Any non-empty name is a plan; whether a directory can hold it is DirName's call.
		{`{"name":"..","height":1}`, Plan{Name: "..", Height: 1}, false},
		{`{"name":"a\u0000b","height":1}`, Plan{Name: "a\x00b", Height: 1}, false},
		{`{"name":"","height":1}`, Plan{}, true},
		{`{"name":"v2","height":-1}`, Plan{}, true},
		{`{"name":"v2","height":1.5}`, Plan{}, true},
		{`{"name":"v2","height":"x"}`, Plan{}, true},
		{`{"name":"v2"} {"name":"v3"}`, Plan{}, true},
		{`[]`, Plan{}, true},
		{`{"name":`, Plan{}, true},
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

// FuzzParseUpgradeInfo: any input is a plan with a name and a height >= 0, or ErrMalformedUpgradeInfo.
func FuzzParseUpgradeInfo(f *testing.F) {
	for _, s := range []string{`{"name":"v2","height":123,"info":"x"}`, `{"name":"v2","height":"1"}`, `{}`, ``, `{"name":".."}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseUpgradeInfo(b)
		if err != nil {
			if !errors.Is(err, ErrMalformedUpgradeInfo) {
				t.Fatalf("unexpected error type %v", err)
			}
			return
		}
		if p.Name == "" || p.Height < 0 {
			t.Fatalf("accepted %+v", p)
		}
	})
}
