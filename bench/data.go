package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

const tableSize = 2 << 20 // goleveldb's default table size

// makePadding writes total bytes of incompressible 2 MiB table files
// (NNNNNN.ldb) into dir once; later runs reuse them.
func makePadding(dir string, total int64) error {
	n := int(total / tableSize)
	if ents, err := os.ReadDir(dir); err == nil && len(ents) == n {
		return nil
	}
	say("writing %d MiB of padding tables to %s (once)", total>>20, dir)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, tableSize)
	for i := range n {
		_, _ = rng.Read(buf)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%06d.ldb", 100000+i)), buf, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// linkPadding hard-links the padding tables into dst (a directory under the
// node's data/ that no database opens, so nothing deletes them): both
// supervisors back up all of data/.
func linkPadding(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Link(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// makeBigArchive writes (once) a tar.gz of about total bytes holding
// bin/exampled (the v2 binary) and incompressible padding, and returns its
// sha256 and size.
func makeBigArchive(path, bin string, total int64) (string, int64, error) {
	if b, err := os.ReadFile(path + ".sha256"); err == nil {
		if fi, err := os.Stat(path); err == nil {
			return strings.TrimSpace(string(b)), fi.Size(), nil
		}
	}
	say("writing a %d MiB tar.gz to %s (once)", total>>20, path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", 0, err
	}
	f, err := os.Create(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	gz, _ := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	in, err := os.Open(bin)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	fi, _ := in.Stat()
	if err := tw.WriteHeader(&tar.Header{Name: "bin/" + daemon, Mode: 0o755, Size: fi.Size(), Typeflag: tar.TypeReg}); err != nil {
		return "", 0, err
	}
	if _, err := io.Copy(tw, in); err != nil {
		return "", 0, err
	}
	// The binary compresses to roughly 40%; pad with random bytes to reach total.
	pad := total - fi.Size()*2/5
	if err := tw.WriteHeader(&tar.Header{Name: "share/padding.bin", Mode: 0o644, Size: pad, Typeflag: tar.TypeReg}); err != nil {
		return "", 0, err
	}
	if _, err := io.CopyN(tw, rand.NewChaCha8([32]byte{2}), pad); err != nil {
		return "", 0, err
	}
	if err := tw.Close(); err != nil {
		return "", 0, err
	}
	if err := gz.Close(); err != nil {
		return "", 0, err
	}
	if err := bw.Flush(); err != nil {
		return "", 0, err
	}
	// Write it back now: left to the kernel, the writeback of 1 GiB of dirty
	// pages lands in the first measured run and stretches its block intervals.
	if err := f.Sync(); err != nil {
		return "", 0, err
	}
	if err := f.Close(); err != nil {
		return "", 0, err
	}
	sum, size, err := sha256File(path)
	if err != nil {
		return "", 0, err
	}
	return sum, size, os.WriteFile(path+".sha256", []byte(sum+"\n"), 0o644)
}
