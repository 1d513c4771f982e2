package home

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
)

// ErrMalformedUpgradeInfo means data/upgrade-info.json exists but cannot be used.
var ErrMalformedUpgradeInfo = errors.New("malformed upgrade-info.json")

// maxUpgradeInfoSize caps what is read from upgrade-info.json; plan info may hold an
// inline binaries map, but nothing near this size.
const maxUpgradeInfoSize = 4 << 20

// ParseUpgradeInfo parses upgrade-info.json as x/upgrade writes it. Height may be a
// JSON number or a decimal string (proto JSON encodes int64 as a string). An empty
// name is an error wrapping ErrMalformedUpgradeInfo; any other name is kept as is.
func ParseUpgradeInfo(b []byte) (Plan, error) {
	var raw struct {
		Name   string          `json:"name"`
		Height json.RawMessage `json:"height"`
		Info   string          `json:"info"`
	}
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&raw); err != nil {
		return Plan{}, fmt.Errorf("%w: %v", ErrMalformedUpgradeInfo, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return Plan{}, fmt.Errorf("%w: trailing data", ErrMalformedUpgradeInfo)
	}
	if raw.Name == "" {
		return Plan{}, fmt.Errorf("%w: empty name", ErrMalformedUpgradeInfo)
	}
	p := Plan{Name: raw.Name, Info: raw.Info}
	if h := bytes.TrimSpace(raw.Height); len(h) > 0 && !bytes.Equal(h, []byte("null")) {
		if h[0] == '"' {
			var s string
			if err := json.Unmarshal(h, &s); err != nil {
				return Plan{}, fmt.Errorf("%w: height: %v", ErrMalformedUpgradeInfo, err)
			}
			h = []byte(s)
		}
		n, err := strconv.ParseInt(string(h), 10, 64)
		if err != nil || n < 0 {
			return Plan{}, fmt.Errorf("%w: height %q", ErrMalformedUpgradeInfo, h)
		}
		p.Height = n
	}
	return p, nil
}

// ReadUpgradeInfo reads data/upgrade-info.json: the plan x/upgrade halted for. ok is
// false (err nil) when the file does not exist or is empty (x/upgrade writes it with
// a plain os.WriteFile; a crash mid-write leaves it empty, and the old binary writes
// it again at the halt). It never modifies the file.
func (l Layout) ReadUpgradeInfo() (p Plan, ok bool, err error) {
	path := l.UpgradeInfo()
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Plan{}, false, nil
	}
	if err != nil {
		return Plan{}, false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxUpgradeInfoSize+1))
	if err != nil {
		return Plan{}, false, fmt.Errorf("read %s: %w", path, err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return Plan{}, false, nil
	}
	if len(b) > maxUpgradeInfoSize {
		return Plan{}, false, fmt.Errorf("%w: %s larger than %d bytes", ErrMalformedUpgradeInfo, path, maxUpgradeInfoSize)
	}
	p, err = ParseUpgradeInfo(b)
	if err != nil {
		return Plan{}, false, fmt.Errorf("%s: %w", path, err)
	}
	return p, true, nil
}
