package cli

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseBatch: any batch file parses or is refused, never panics; every entry
// has a name, an entry of the name:path:height form a path and a height above 0;
// and the entries, written back in the form they came in, parse to the same.
func FuzzParseBatch(f *testing.F) {
	for _, s := range []string{
		`[{"name":"v2","height":100,"info":"{\"binaries\":{\"any\":\"https://x/appd?checksum=sha256:00\"}}"}]`,
		`[{"name":"v2","height":"100"},{"name":"v3","time":"0001-01-01T00:00:00Z","height":200,"info":"https://x/v3.json"}]`,
		`[{"name":"","height":1}]`,
		`[{"name":"v2","height":-1}]`,
		`[]`,
		`[`,
		"v2:/opt/v2/appd:100,v3:/opt/v3/appd:200",
		"# upgrades\r\nv2 : /opt/a:b/appd : 100\r\n\nv3:rel/appd:200,\n",
		"v2:100",
		":/x:1",
		"v2::1",
		"v2:/x:9223372036854775808",
		"v2:/x:+7",
		"\u0085v2:/x:1",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := parseBatch(b)
		if err != nil {
			if entries != nil {
				t.Fatalf("entries %+v with error %v", entries, err)
			}
			return
		}
		jsonForm := strings.HasPrefix(strings.TrimSpace(string(b)), "[")
		for i, e := range entries {
			switch {
			case e.plan.Name == "":
				t.Fatalf("entry %d has no name: %+v", i, e)
			case jsonForm && e.file != "":
				t.Fatalf("entry %d of a JSON batch has a path: %+v", i, e)
			case !jsonForm && (e.file == "" || e.plan.Info != ""):
				t.Fatalf("entry %d of a name:path:height list has no path, or an info: %+v", i, e)
			case !jsonForm && e.plan.Height <= 0:
				t.Fatalf("entry %d of a name:path:height list has height %d: %+v", i, e.plan.Height, e)
			}
		}

		// Round trip, in the form the batch came in.
		var again []byte
		if jsonForm {
			type p struct {
				Name   string `json:"name"`
				Height int64  `json:"height"`
				Info   string `json:"info"`
			}
			ps := make([]p, len(entries))
			for i, e := range entries {
				ps[i] = p{e.plan.Name, e.plan.Height, e.plan.Info}
			}
			again, _ = json.Marshal(ps)
		} else {
			lines := make([]string, len(entries))
			for i, e := range entries {
				lines[i] = e.plan.Name + ":" + e.file + ":" + strconv.FormatInt(e.plan.Height, 10)
			}
			again = []byte(strings.Join(lines, "\n"))
		}
		back, err := parseBatch(again)
		if jsonForm && len(entries) == 0 {
			return // `[]` lists nothing either way
		}
		if err != nil || len(back) != len(entries) {
			t.Fatalf("%q written back as %q: %+v, %v", b, again, back, err)
		}
		for i := range entries {
			if back[i] != entries[i] {
				t.Fatalf("entry %d: %+v written back as %q reads %+v", i, entries[i], again, back[i])
			}
		}
	})
}
