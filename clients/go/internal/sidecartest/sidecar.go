// Package sidecartest runs a real cosyvoice-sidecar, on its embedded DashScope
// emulator, as a subprocess for the tests of this module, and reads the
// emulator's records of what it received and sent.
//
// The sidecar binary comes from $COSYVOICE_SIDECAR_BIN (the Makefile sets
// it). Without it, tests skip with the reason, except when $CI is set: then
// a missing sidecar is a failure.
package sidecartest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sidecar is a running `cosyvoice-sidecar serve --emulator` subprocess.
type Sidecar struct {
	// Addr is the gRPC address, host:port.
	Addr string
	// EmulatorURL is the emulator's WebSocket URL, as the sidecar printed it.
	EmulatorURL string

	httpBase string // http://host:port of the emulator's control endpoints
	cmd      *exec.Cmd
	logs     *tail
	exited   chan struct{}
	waitErr  error

	stopOnce sync.Once
	stopErr  error
}

// Options change how [StartWith] runs the sidecar.
type Options struct {
	// Env holds extra environment entries, "NAME=value", e.g.
	// "OTEL_TRACES_EXPORTER=console". The sidecar inherits the test's
	// environment except the OTEL_* variables, so that a test gets the
	// telemetry it asks for here and no other; Env is added after that and
	// its entries win.
	Env []string
	// LogLimit is how many bytes of the sidecar's stderr [Sidecar.Logs] keeps
	// (the last ones); 0 means 64 KiB.
	LogLimit int
	// Args are extra `serve` flags, e.g. "--pool-max-size", "1".
	Args []string
}

// Start launches bin with the default [Options] and waits (at most timeout)
// until it prints the emulator and serving lines on stdout.
func Start(bin string, timeout time.Duration) (*Sidecar, error) {
	return StartWith(bin, timeout, Options{})
}

// StartWith is [Start] with options.
func StartWith(bin string, timeout time.Duration, opts Options) (*Sidecar, error) {
	cmd := exec.Command(bin, append([]string{"serve", "--emulator", "--listen", "127.0.0.1:0"}, opts.Args...)...)
	cmd.Env = append(environWithoutOTel(), opts.Env...)
	// Wait gives up on the output pipes this long after the exit, should a
	// grandchild still hold them.
	cmd.WaitDelay = 5 * time.Second
	limit := opts.LogLimit
	if limit <= 0 {
		limit = 64 << 10
	}
	logs := &tail{max: limit}
	cmd.Stderr = logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &Sidecar{cmd: cmd, logs: logs, exited: make(chan struct{})}

	type ready struct {
		emulator, serving string
		err               error
	}
	readyc := make(chan ready, 1)
	go func() {
		var r ready
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if v, ok := strings.CutPrefix(line, "emulator on "); ok && r.emulator == "" {
				r.emulator = v
			}
			if v, ok := strings.CutPrefix(line, "serving on "); ok && r.serving == "" {
				r.serving = v
				readyc <- r
				break
			}
		}
		if r.serving == "" {
			r.err = errors.New("stdout closed before the 'serving on' line")
			readyc <- r
		}
		// Keep draining so that the child never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, stdout)
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()

	var r ready
	select {
	case r = <-readyc:
	case <-time.After(timeout):
		r.err = fmt.Errorf("no 'serving on' line within %v", timeout)
	}
	if r.err == nil && r.emulator == "" {
		r.err = errors.New("'serving on' came without an 'emulator on' line before it")
	}
	if r.err == nil {
		u, err := url.Parse(r.emulator)
		if err != nil || u.Host == "" {
			r.err = fmt.Errorf("cannot parse emulator URL %q", r.emulator)
		} else {
			s.httpBase = "http://" + u.Host
		}
	}
	if r.err != nil {
		_ = s.Stop(5 * time.Second)
		return nil, fmt.Errorf("sidecar did not start: %w\n--- sidecar stderr ---\n%s", r.err, logs)
	}
	s.Addr, s.EmulatorURL = r.serving, r.emulator
	return s, nil
}

// Stop sends SIGTERM and waits at most grace for the exit, then kills. It
// returns an error unless the sidecar exited with status 0 in time. Only the
// first call acts; later ones return its result.
func (s *Sidecar) Stop(grace time.Duration) error {
	s.stopOnce.Do(func() { s.stopErr = s.stop(grace) })
	return s.stopErr
}

func (s *Sidecar) stop(grace time.Duration) error {
	select {
	case <-s.exited:
		return fmt.Errorf("sidecar had already exited: %v", s.waitErr)
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if s.waitErr != nil {
			return fmt.Errorf("sidecar exited after SIGTERM with %v", s.waitErr)
		}
		return nil
	case <-time.After(grace):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("sidecar still running %v after SIGTERM; killed", grace)
	}
}

// Logs returns the last part of the sidecar's stderr (see
// [Options.LogLimit]), for failure messages. Once [Sidecar.Stop] has
// returned, it ends with the last bytes the sidecar wrote.
func (s *Sidecar) Logs() string { return s.logs.String() }

// LogsDropped returns how many bytes of stderr, from its start, [Sidecar.Logs]
// no longer holds.
func (s *Sidecar) LogsDropped() int64 { return s.logs.Dropped() }

// environWithoutOTel is the test's environment minus the OTEL_* variables.
func environWithoutOTel() []string {
	env := os.Environ()
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "OTEL_") {
			out = append(out, kv)
		}
	}
	return out
}

// Task is the emulator's record of one DashScope task.
type Task struct {
	TaskID       string  `json:"task_id"`
	ConnectionID int     `json:"connection_id"`
	Model        string  `json:"model"`
	Voice        string  `json:"voice"`
	Format       string  `json:"format"`
	SampleRate   int     `json:"sample_rate"`
	Outcome      string  `json:"outcome"`
	AudioBytes   int     `json:"audio_bytes"`
	AudioSHA256  string  `json:"audio_sha256"`
	Characters   int     `json:"characters"`
	ErrorCode    *string `json:"error_code"`
}

// Stats is the emulator's GET /_emulator/stats answer.
type Stats struct {
	ConnectionsOpened int    `json:"connections_opened"`
	ConnectionsOpen   int    `json:"connections_open"`
	Tasks             []Task `json:"tasks"`
}

// Stats fetches the emulator's statistics.
func (s *Sidecar) Stats(ctx context.Context) (*Stats, error) {
	var st Stats
	if err := s.getJSON(ctx, "/_emulator/stats", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// WaitTask polls the emulator (every 50 ms, until ctx ends) for the task
// with id until done(task) is true, and returns the last record seen.
func (s *Sidecar) WaitTask(ctx context.Context, id string, done func(*Task) bool) (*Task, error) {
	var last *Task
	for {
		st, err := s.Stats(ctx)
		if err != nil {
			return last, err
		}
		for i := range st.Tasks {
			if st.Tasks[i].TaskID == id {
				last = &st.Tasks[i]
			}
		}
		if last != nil && done(last) {
			return last, nil
		}
		select {
		case <-ctx.Done():
			if last == nil {
				return nil, fmt.Errorf("task %s not in the emulator's stats: %w", id, ctx.Err())
			}
			return last, fmt.Errorf("task %s still %q: %w", id, last.Outcome, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Ended reports whether the task is no longer running.
func Ended(t *Task) bool { return t.Outcome != "running" }

// Knobs sets the given emulator knobs (none: only reads) and returns all
// knobs as raw JSON values.
func (s *Sidecar) Knobs(ctx context.Context, set url.Values) (map[string]json.RawMessage, error) {
	path := "/_emulator/knobs"
	if len(set) > 0 {
		path += "?" + set.Encode()
	}
	knobs := map[string]json.RawMessage{}
	if err := s.getJSON(ctx, path, &knobs); err != nil {
		return nil, err
	}
	return knobs, nil
}

func (s *Sidecar) getJSON(ctx context.Context, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.httpBase+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// Scale multiplies d by $COSYVOICE_TEST_TIME_SCALE (default 1), the one knob
// that stretches every test timeout on slow machines.
func Scale(d time.Duration) time.Duration {
	f, err := strconv.ParseFloat(os.Getenv("COSYVOICE_TEST_TIME_SCALE"), 64)
	if err != nil || f <= 0 {
		return d
	}
	return time.Duration(float64(d) * f)
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped int64
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.dropped += int64(over)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func (t *tail) Dropped() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dropped
}
