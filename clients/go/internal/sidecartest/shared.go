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
	bin, why, err := binary()
	switch {
	case err != nil:
		sharedErr = err
	case why != "":
		skipWhy = why
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

// StartForTest starts a sidecar of the test's own, with opts (e.g. the
// environment that turns its telemetry on), or ends the test as [Get] does.
// The sidecar is stopped when the test ends, unless the test stopped it
// itself with [Sidecar.Stop]; either way a sidecar that does not exit
// cleanly fails the test.
func StartForTest(t testing.TB, opts Options) *Sidecar {
	t.Helper()
	bin, why, err := binary()
	switch {
	case err != nil:
		t.Fatal(err)
	case why != "":
		t.Skip(why)
	}
	s, err := StartWith(bin, Scale(60*time.Second), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(Scale(20 * time.Second)); err != nil {
			t.Errorf("%v\n--- sidecar stderr ---\n%s", err, s.Logs())
		}
	})
	return s
}

// binary returns $COSYVOICE_SIDECAR_BIN, or why the tests skip without it,
// or, under $CI, the error that fails them.
func binary() (bin, skip string, err error) {
	bin = os.Getenv("COSYVOICE_SIDECAR_BIN")
	switch {
	case bin == "" && os.Getenv("CI") != "":
		return "", "", fmt.Errorf("COSYVOICE_SIDECAR_BIN is not set, and CI is set: the client tests must run")
	case bin == "":
		return "", "COSYVOICE_SIDECAR_BIN is not set (run through `make test-go`, or set it to .venv/bin/cosyvoice-sidecar)", nil
	}
	return bin, "", nil
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
