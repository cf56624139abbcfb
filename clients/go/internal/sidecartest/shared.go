package sidecartest

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"
)

// AddrEnv is the variable through which Main tells examples the address of
// the shared sidecar; examples read it as user code reads its configuration.
const AddrEnv = "COSYVOICE_SIDECAR_ADDR"

var (
	shared    *Sidecar
	sharedErr error
	skipWhy   string
)

// Main is a TestMain body: it starts one sidecar shared by the package's
// tests and examples, runs them, stops the sidecar with SIGTERM and fails
// the run if the sidecar does not exit cleanly. Without
// $COSYVOICE_SIDECAR_BIN it runs the tests (they skip, or fail under $CI)
// and skips the examples, which cannot skip themselves.
func Main(m *testing.M) int {
	flag.Parse()
	bin := os.Getenv("COSYVOICE_SIDECAR_BIN")
	switch {
	case bin == "" && os.Getenv("CI") != "":
		sharedErr = fmt.Errorf("COSYVOICE_SIDECAR_BIN is not set, and CI is set: the client tests must run")
	case bin == "":
		skipWhy = "COSYVOICE_SIDECAR_BIN is not set (run through `make test-go`, or set it to .venv/bin/cosyvoice-sidecar)"
		fmt.Fprintf(os.Stderr, "sidecartest: skipping tests and examples: %s\n", skipWhy)
		if f := flag.Lookup("test.skip"); f != nil && f.Value.String() == "" {
			_ = f.Value.Set("^Example")
		}
	default:
		shared, sharedErr = Start(bin, Scale(60*time.Second))
		if shared != nil {
			os.Setenv(AddrEnv, shared.Addr)
		}
	}
	code := m.Run()
	if shared != nil {
		if err := shared.Stop(Scale(20 * time.Second)); err != nil {
			fmt.Fprintf(os.Stderr, "sidecartest: %v\n--- sidecar stderr ---\n%s\n", err, shared.Logs())
			code = 1
		}
	}
	return code
}

// Get returns the shared sidecar, or ends the test: skip without a sidecar
// binary, failure under $CI or when the sidecar did not start.
func Get(t testing.TB) *Sidecar {
	t.Helper()
	switch {
	case shared != nil:
		return shared
	case sharedErr != nil:
		t.Fatal(sharedErr)
	case skipWhy != "":
		t.Skip(skipWhy)
	default:
		t.Fatal("sidecartest.Get called without sidecartest.Main in TestMain")
	}
	return nil
}

// SetKnob sets one emulator knob for the rest of the test and restores its
// previous value when the test ends.
func (s *Sidecar) SetKnob(t testing.TB, name, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Scale(10*time.Second))
	defer cancel()
	before, err := s.Knobs(ctx, nil)
	if err != nil {
		t.Fatalf("read emulator knobs: %v", err)
	}
	old, ok := before[name]
	if !ok {
		t.Fatalf("the emulator has no knob %q (knobs: %v)", name, keys(before))
	}
	// A string knob is restored from its value, any other from its JSON text.
	oldValue := string(old)
	var str string
	if json.Unmarshal(old, &str) == nil {
		oldValue = str
	}
	if _, err := s.Knobs(ctx, url.Values{name: {value}}); err != nil {
		t.Fatalf("set emulator knob %s=%s: %v", name, value, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Scale(10*time.Second))
		defer cancel()
		if _, err := s.Knobs(ctx, url.Values{name: {oldValue}}); err != nil {
			t.Errorf("restore emulator knob %s=%s: %v", name, oldValue, err)
		}
	})
}

func keys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
