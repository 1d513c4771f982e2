package relauncher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// UpgradeInfoFile is the file x/upgrade writes at the halt, relative to Home.
const UpgradeInfoFile = "data/upgrade-info.json"

// maxUpgradeInfoSize caps what is read from upgrade-info.json; plan info may hold an
// inline binaries map, but nothing near this size.
const maxUpgradeInfoSize = 4 << 20

// UpgradeInfo is the content of data/upgrade-info.json.
type UpgradeInfo struct {
	Name   string `json:"name"`
	Height int64  `json:"height"`
	Info   string `json:"info"`
}

// ParseUpgradeInfo parses upgrade-info.json. Height may be a JSON number or a
// decimal string (proto JSON encodes int64 as a string). A missing or unusable name
// is an error wrapping ErrMalformedUpgradeInfo.
func ParseUpgradeInfo(b []byte) (UpgradeInfo, error) {
	var raw struct {
		Name   string          `json:"name"`
		Height json.RawMessage `json:"height"`
		Info   string          `json:"info"`
	}
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&raw); err != nil {
		return UpgradeInfo{}, fmt.Errorf("%w: %v", ErrMalformedUpgradeInfo, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return UpgradeInfo{}, fmt.Errorf("%w: trailing data", ErrMalformedUpgradeInfo)
	}
	ui := UpgradeInfo{Name: raw.Name, Info: raw.Info}
	if err := validUpgradeName(ui.Name); err != nil {
		return UpgradeInfo{}, fmt.Errorf("%w: name: %v", ErrMalformedUpgradeInfo, err)
	}
	if h := bytes.TrimSpace(raw.Height); len(h) > 0 && !bytes.Equal(h, []byte("null")) {
		if h[0] == '"' {
			var s string
			if err := json.Unmarshal(h, &s); err != nil {
				return UpgradeInfo{}, fmt.Errorf("%w: height: %v", ErrMalformedUpgradeInfo, err)
			}
			h = []byte(s)
		}
		n, err := strconv.ParseInt(string(h), 10, 64)
		if err != nil || n < 0 {
			return UpgradeInfo{}, fmt.Errorf("%w: height %q", ErrMalformedUpgradeInfo, h)
		}
		ui.Height = n
	}
	return ui, nil
}

// ReadUpgradeInfo reads <home>/data/upgrade-info.json. ok is false (and err nil) when
// the file does not exist or is empty. It never modifies the file.
func ReadUpgradeInfo(home string) (ui UpgradeInfo, ok bool, err error) {
	p := filepath.Join(home, filepath.FromSlash(UpgradeInfoFile))
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return UpgradeInfo{}, false, nil
	}
	if err != nil {
		return UpgradeInfo{}, false, fmt.Errorf("relauncher: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxUpgradeInfoSize+1))
	if err != nil {
		return UpgradeInfo{}, false, fmt.Errorf("relauncher: read %s: %w", p, err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		// x/upgrade writes the file with a plain os.WriteFile; a crash mid-write leaves
		// it empty. The old binary rewrites it when it reaches the halt again.
		return UpgradeInfo{}, false, nil
	}
	if len(b) > maxUpgradeInfoSize {
		return UpgradeInfo{}, false, fmt.Errorf("%w: %s larger than %d bytes", ErrMalformedUpgradeInfo, p, maxUpgradeInfoSize)
	}
	ui, err = ParseUpgradeInfo(b)
	if err != nil {
		return UpgradeInfo{}, false, fmt.Errorf("%s: %w", p, err)
	}
	return ui, true, nil
}
