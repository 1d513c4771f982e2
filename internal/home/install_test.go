package home

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// installHome is a home with upgrade v2's binary recorded for plan (as staging
// records it) and a patch release outside the home.
func installHome(t *testing.T) (l Layout, plan Plan, staged, patch string) {
	t.Helper()
	l, err := New(t.TempDir(), "appd", Options{})
	if err != nil {
		t.Fatal(err)
	}
	plan = Plan{Name: "v2", Height: 40, Info: "info"}
	staged, _ = l.UpgradeBin("v2")
	writeExec(t, staged, "#!/bin/sh\necho v2.0.0\n")
	d := hashPath(t, staged)
	if err := l.WriteRecord(Record{Plan: "v2", Height: 40, InfoHash: plan.InfoHash(), Source: SourceDownload,
		SHA256: d.SHA256, Size: d.Size, Stamp: d.Stamp}); err != nil {
		t.Fatal(err)
	}
	patch = filepath.Join(t.TempDir(), "appd")
	writeExec(t, patch, "#!/bin/sh\necho v2.0.1\n")
	return l, plan, staged, patch
}

func writeExec(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

func hashPath(t *testing.T, p string) Digest {
	t.Helper()
	d, err := hashAt(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func patchRecord(plan Plan, src string) Record {
	return Record{Plan: plan.Name, Height: plan.Height, InfoHash: plan.InfoHash(), Source: SourceOperatorStarted, File: src}
}

// TestInstallBinaryReplacesAndKeeps: the patch becomes the binary Open proves
// for the plan, and the binary it replaced is kept with its record, unchanged.
func TestInstallBinaryReplacesAndKeeps(t *testing.T) {
	l, plan, staged, patch := installHome(t)
	ctx := context.Background()
	oldRec, err := l.ReadRecord("v2")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := l.InstallBinary(ctx, patch, patchRecord(plan, patch))
	if err != nil {
		t.Fatal(err)
	}
	v, err := l.Open(ctx, plan)
	if err != nil {
		t.Fatalf("the installed patch is not proven for the plan: %v", err)
	}
	defer v.Close()
	if v.Rehashed || v.Path != staged || rep.Path != staged || v.Record.SHA256 != hashPath(t, patch).SHA256 {
		t.Fatalf("Open = %+v (rehashed %v), replacement %+v", v.Record, v.Rehashed, rep)
	}
	if v.Record.Source != SourceOperatorStarted || v.Record.File != patch || !v.Record.Source.Unconfirmed() {
		t.Fatalf("record %+v", v.Record)
	}
	if got, _ := os.ReadFile(staged); string(got) != "#!/bin/sh\necho v2.0.1\n" {
		t.Fatalf("binary at %s = %q", staged, got)
	}
	// The previous binary and its record, under previous/<time>/.
	if filepath.Dir(filepath.Dir(rep.Kept)) != filepath.Join(filepath.Dir(filepath.Dir(staged)), PreviousDir) ||
		filepath.Base(rep.Kept) != "appd" {
		t.Fatalf("kept at %q", rep.Kept)
	}
	if got, _ := os.ReadFile(rep.Kept); string(got) != "#!/bin/sh\necho v2.0.0\n" {
		t.Fatalf("kept binary = %q", got)
	}
	if rep.KeptRecord == nil || rep.KeptRecord.SHA256 != oldRec.SHA256 || rep.KeptRecord.Source != SourceDownload {
		t.Fatalf("kept record %+v, want %+v", rep.KeptRecord, oldRec)
	}
	prev, err := l.Previous("v2")
	if err != nil || len(prev) != 1 || prev[0].Bin != rep.Kept || prev[0].Err != nil || prev[0].Record.SHA256 != oldRec.SHA256 {
		t.Fatalf("Previous = %+v, %v", prev, err)
	}
	// Not an upgrade directory of its own: the listing of installs is unchanged.
	if ins := l.Installs(); len(ins) != 1 || ins[0].Bin != staged {
		t.Fatalf("Installs = %+v", ins)
	}

	// A second patch keeps the first one too, newest first.
	patch2 := filepath.Join(t.TempDir(), "appd")
	writeExec(t, patch2, "#!/bin/sh\necho v2.0.2\n")
	rep2, err := l.InstallBinary(ctx, patch2, patchRecord(plan, patch2))
	if err != nil {
		t.Fatal(err)
	}
	prev, _ = l.Previous("v2")
	if len(prev) != 2 || prev[0].Bin != rep2.Kept || prev[0].Record.Source != SourceOperatorStarted || prev[1].Bin != rep.Kept {
		t.Fatalf("Previous after two patches = %+v", prev)
	}
}

// TestInstallBinaryVerifiedHash: a caller's verified sha256 that the copy does
// not have leaves everything as it was.
func TestInstallBinaryVerifiedHash(t *testing.T) {
	l, plan, staged, patch := installHome(t)
	ctx := context.Background()
	rec := patchRecord(plan, patch)
	rec.SHA256 = strings.Repeat("a", 64)
	if _, err := l.InstallBinary(ctx, patch, rec); !errors.Is(err, ErrChanged) {
		t.Fatalf("InstallBinary with a wrong verified hash: %v", err)
	}
	v, err := l.Open(ctx, plan)
	if err != nil {
		t.Fatalf("the staged binary is no longer proven after a refused install: %v", err)
	}
	v.Close()
	if got, _ := os.ReadFile(staged); string(got) != "#!/bin/sh\necho v2.0.0\n" {
		t.Fatalf("binary = %q", got)
	}
	if prev, _ := l.Previous("v2"); len(prev) != 0 {
		t.Fatalf("a refused install left kept copies: %+v", prev)
	}
	assertNoTemps(t, filepath.Dir(staged))
}

// TestInstallBinaryNothingThere: with no binary (or only a record for another
// plan) at the path, the copy is installed; the stale record is kept.
func TestInstallBinaryNothingThere(t *testing.T) {
	l, err := New(t.TempDir(), "appd", Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	plan := Plan{Name: "V2", Height: 7}
	patch := filepath.Join(t.TempDir(), "appd")
	writeExec(t, patch, "#!/bin/sh\necho v2\n")
	rep, err := l.InstallBinary(ctx, patch, patchRecord(plan, patch))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Kept != "" || rep.KeptRecord != nil {
		t.Fatalf("kept %q %+v with nothing there", rep.Kept, rep.KeptRecord)
	}
	v, err := l.Open(ctx, plan)
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	if prev, _ := l.Previous("v2"); len(prev) != 0 {
		t.Fatalf("Previous = %+v", prev)
	}
}

// TestInstallBinaryInPlace: the file at the binary path itself (started from
// there, unrecorded) gets a record without being copied; the stale record it had
// is kept.
func TestInstallBinaryInPlace(t *testing.T) {
	l, _, staged, _ := installHome(t)
	ctx := context.Background()
	before, _ := StampOf(staged)
	other := Plan{Name: "v2", Height: 41, Info: "replaced plan"}
	rep, err := l.InstallBinary(ctx, staged, patchRecord(other, staged))
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := StampOf(staged); !after.Same(before) {
		t.Fatal("the binary was rewritten in place")
	}
	if rep.Kept != "" || rep.KeptRecord == nil || rep.KeptRecord.Height != 40 {
		t.Fatalf("kept %q, record %+v", rep.Kept, rep.KeptRecord)
	}
	v, err := l.Open(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	prev, _ := l.Previous("v2")
	if len(prev) != 1 || prev[0].Err != nil || prev[0].Record.Height != 40 {
		t.Fatalf("Previous = %+v", prev)
	}
	if _, err := os.Lstat(prev[0].Bin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a binary was kept for an in-place record: %v", err)
	}
}

// TestInstallBinaryRefusesPlantedLinks: a symlinked previous/ (or bin/) would
// write outside the home; refused before anything is written.
func TestInstallBinaryRefusesPlantedLinks(t *testing.T) {
	l, plan, staged, patch := installHome(t)
	elsewhere := t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(filepath.Dir(filepath.Dir(staged)), PreviousDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.InstallBinary(context.Background(), patch, patchRecord(plan, patch)); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("InstallBinary through a symlinked previous/: %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Fatalf("wrote through the link: %v", ents)
	}
	if got, _ := os.ReadFile(staged); string(got) != "#!/bin/sh\necho v2.0.0\n" {
		t.Fatalf("binary = %q", got)
	}
	// Not an executable: refused.
	plain := filepath.Join(t.TempDir(), "appd")
	if err := os.WriteFile(plain, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.InstallBinary(context.Background(), plain, patchRecord(plan, plain)); err == nil {
		t.Fatal("a non-executable source was installed")
	}
}

func assertNoTemps(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), TempMarker) {
			t.Errorf("temp left: %s", e.Name())
		}
	}
}
