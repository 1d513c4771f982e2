package relauncher

import (
	"errors"
	"testing"
)

func TestUnderCosmovisor(t *testing.T) {
	errNo := errors.New("no such file")
	tests := []struct {
		name    string
		ppid    int
		exe     string
		cmdline string
		comm    string
		want    bool
	}{
		{"exe", 10, "/usr/local/bin/cosmovisor", "", "", true},
		{"exe deleted", 10, "/root/go/bin/cosmovisor (deleted)", "", "", true},
		{"cmdline only", 10, "", "/home/u/go/bin/cosmovisor\x00run\x00start\x00", "", true},
		{"versioned name", 10, "/opt/cosmovisor-v1.5.0", "", "", true},
		{"comm only", 10, "", "", "cosmovisor\n", true},
		{"systemd", 1, "/usr/lib/systemd/systemd", "/sbin/init\x00", "systemd\n", false},
		{"bash", 10, "/usr/bin/bash", "-bash\x00", "bash\n", false},
		{"similar name", 10, "/usr/bin/mycosmovisor", "mycosmovisor\x00", "mycosmovisor", false},
		{"unreadable", 10, "", "", "", false},
		{"arg named cosmovisor", 10, "/usr/bin/sh", "sh\x00cosmovisor\x00", "sh", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{}
			if tc.cmdline != "" {
				files["/proc/10/cmdline"] = tc.cmdline
			}
			if tc.comm != "" {
				files["/proc/10/comm"] = tc.comm
			}
			p := ProcReader{
				Getppid: func() int { return tc.ppid },
				ReadFile: func(n string) ([]byte, error) {
					if s, ok := files[n]; ok {
						return []byte(s), nil
					}
					return nil, errNo
				},
				Readlink: func(n string) (string, error) {
					if n == "/proc/10/exe" && tc.exe != "" {
						return tc.exe, nil
					}
					return "", errNo
				},
			}
			if got := UnderCosmovisorWith(p); got != tc.want {
				t.Fatalf("UnderCosmovisorWith = %v, want %v", got, tc.want)
			}
		})
	}
	// The test binary's parent is `go test`, not cosmovisor.
	if UnderCosmovisor() {
		t.Fatal("UnderCosmovisor true under go test")
	}
}
