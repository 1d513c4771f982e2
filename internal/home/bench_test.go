package home

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

// benchBinarySize is about the size of a Cosmos SDK chain binary (exampled: 165 MB).
const benchBinarySize = 165 << 20

// benchHome stages a binary of benchBinarySize with its record; the file is in
// the page cache, as a staged binary is at the halt.
func benchHome(b *testing.B) (Layout, Plan, string) {
	b.Helper()
	l, err := New(b.TempDir(), "appd", Options{})
	if err != nil {
		b.Fatal(err)
	}
	p := Plan{Name: "v2", Height: 100, Info: "info"}
	bin, _ := l.UpgradeBin(p.Name)
	os.MkdirAll(filepath.Dir(bin), 0o755)
	data := make([]byte, benchBinarySize)
	rand.Read(data)
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		b.Fatal(err)
	}
	f, _ := os.Open(bin)
	d, err := HashFile(context.Background(), f)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	if err := l.WriteRecord(Record{Plan: p.Name, Height: p.Height, InfoHash: p.InfoHash(), Source: SourceDownload,
		SHA256: d.SHA256, Size: d.Size, Stamp: d.Stamp}); err != nil {
		b.Fatal(err)
	}
	return l, p, bin
}

// BenchmarkOpenUnchanged is the proof at the halt for a binary whose stamp proves
// it unchanged since staging: no byte is read.
func BenchmarkOpenUnchanged(b *testing.B) {
	l, p, _ := benchHome(b)
	b.ResetTimer()
	for b.Loop() {
		v, err := l.Open(context.Background(), p)
		if err != nil || v.Rehashed {
			b.Fatal(err, v.Rehashed)
		}
		v.Close()
	}
}

// BenchmarkOpenRehash is the proof when the stamp does not prove the file
// unchanged (here: its ctime moved), so the 165 MB are hashed again from the page
// cache before the exec.
func BenchmarkOpenRehash(b *testing.B) {
	l, p, bin := benchHome(b)
	b.SetBytes(benchBinarySize)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		os.Chmod(bin, 0o755) // sets ctime: the stamp no longer matches
		b.StartTimer()
		v, err := l.Open(context.Background(), p)
		if err != nil || !v.Rehashed {
			b.Fatal(err)
		}
		v.Close()
	}
}
