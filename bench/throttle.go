package main

import (
	"net"
	"net/http"
	"time"
)

// throttledWriter paces writes to rate bytes per second (per response), in
// 32 KiB slices, so a download over loopback takes as long as over a link of
// that speed.
type throttledWriter struct {
	http.ResponseWriter
	rate  float64
	start time.Time
	sent  int64
}

func (w *throttledWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		c := min(len(b), 32<<10)
		due := w.start.Add(time.Duration(float64(w.sent+int64(c)) / w.rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		m, err := w.ResponseWriter.Write(b[:c])
		n += m
		w.sent += int64(m)
		if err != nil {
			return n, err
		}
		b = b[c:]
	}
	return n, nil
}

// Throttled wraps h so every response body is sent at rate bytes per second.
func Throttled(h http.Handler, rate float64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&throttledWriter{ResponseWriter: w, rate: rate, start: time.Now()}, r)
	})
}

type server struct {
	URL string
	srv *http.Server
}

func serve(dir string, rate float64) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	var h http.Handler = http.FileServer(http.Dir(dir))
	if rate > 0 {
		h = Throttled(h, rate)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.Serve(l) }()
	return &server{URL: "http://" + l.Addr().String(), srv: s}, nil
}

func (s *server) Close() error { return s.srv.Close() }
