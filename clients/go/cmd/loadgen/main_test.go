package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// pythonSpec is WorkerSpec(...).to_json() as bench/cosyvoice_sidecar_bench/worker.py writes
// it (tests/bench/test_loadgen.py runs both load generators on live specs).
const pythonSpec = `{"mode": "grpc-stream", "level": 4, "target": "127.0.0.1:50051", "workload": {"text": "Warm sockets make the first packet fast.", "fragments": ["Warm sockets make the ", "first packet fast."], "sample_rate": 22050, "model": "cosyvoice-v3-flash", "voice": "longanyang", "expected_bytes": 105840, "intrinsic_ms": 150.0, "audio_ms": 2400.0, "parameters": {"text_type": "PlainText", "voice": "longanyang", "format": "pcm", "sample_rate": 22050, "volume": 50, "rate": 1.0, "pitch": 1.0}}, "ramp_s": 0.2, "duration_s": 4.0, "task_timeout_s": 30.0, "api_key": "sk-bench-local", "end": "half-close", "max_tasks": 0, "honor_retry": false}`

func TestSpecFromThePythonBench(t *testing.T) {
	s, err := parseSpec(pythonSpec)
	if err != nil {
		t.Fatal(err)
	}
	w := s.Workload
	if s.Mode != "grpc-stream" || s.Level != 4 || s.Target != "127.0.0.1:50051" ||
		strings.Join(w.Fragments, "") != w.Text || w.SampleRate != 22050 || w.ExpectedBytes != 105840 ||
		seconds(s.TaskTimeoutS) != 30*time.Second {
		t.Fatalf("parsed %+v", s)
	}
	// Worker i starts at ramp*i/level.
	want := []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond}
	if got := s.offsets(); !reflect.DeepEqual(got, want) {
		t.Errorf("offsets %v, want %v", got, want)
	}
}

func TestSpecIsDecodedStrictly(t *testing.T) {
	for name, text := range map[string]string{
		"a field this load generator does not know": strings.Replace(pythonSpec, `"api_key"`, `"new_knob": 1, "api_key"`, 1),
		"a mode it does not run":                    strings.Replace(pythonSpec, `"grpc-stream"`, `"floor"`, 1),
		"level 0":                                   strings.Replace(pythonSpec, `"level": 4`, `"level": 0`, 1),
		"an end it does not know":                   strings.Replace(pythonSpec, `"half-close"`, `"hang-up"`, 1),
	} {
		if _, err := parseSpec(text); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestResultLineKeysAndUnits(t *testing.T) {
	tl := newTally(100)
	empty, _ := json.Marshal(tl.r)
	// The Python worker's _result keys, in its order; lists are [] and the
	// breakdown {} before any sample, never null.
	const wantEmpty = `{"event":"result","tasks":0,"errors":0,"audio_mismatches":0,"error_samples":[],"error_kinds":{},"ttfb_ms":[],"gaps_ms":[],"breakdown":{},"elapsed_s":0,"cpu_s":0,"peak_rss_mb":0}`
	if string(empty) != wantEmpty {
		t.Errorf("empty result\n %s\nwant\n %s", empty, wantEmpty)
	}

	tl.ok(1234567*time.Nanosecond, []time.Duration{25 * time.Millisecond}, 99)
	tl.breakdown(152.00049, 2*time.Millisecond)
	tl.error(errString(strings.Repeat("é", 400)))
	r := tl.r
	if r.Tasks != 2 || r.Errors != 1 || r.AudioMismatches != 1 {
		t.Errorf("counts %+v", r)
	}
	// Milliseconds rounded to 3 decimals, as round(seconds * 1000, 3).
	if r.TTFBMs[0] != 1.235 || r.GapsMs[0] != 25 || r.Breakdown["server_first_audio_ms"][0] != 152 ||
		r.Breakdown["client_started_ms"][0] != 2 {
		t.Errorf("samples %v %v %v", r.TTFBMs, r.GapsMs, r.Breakdown)
	}
	if r.ErrorSamples[0] != "99 audio bytes, expected 100" || len([]rune(r.ErrorSamples[1])) != maxErrorChars {
		t.Errorf("error samples %q", r.ErrorSamples)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestErrorKindsAndRetryHints(t *testing.T) {
	throttled, err := status.New(codes.ResourceExhausted, "throttled").WithDetails(
		&errdetails.ErrorInfo{Reason: "Throttling.RateQuota", Domain: "dashscope"},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		err  error
		kind string
	}{
		{throttled.Err(), "RESOURCE_EXHAUSTED Throttling.RateQuota"},
		{status.Error(codes.DeadlineExceeded, "late"), "DEADLINE_EXCEEDED"},
		{errString("the task ended without audio"), "error"},
	} {
		if got := kind(c.err); got != c.kind {
			t.Errorf("kind(%v) = %q, want %q", c.err, got, c.kind)
		}
	}
	if wait, ok := retryAfter(throttled.Err()); !ok || wait != 1500*time.Millisecond {
		t.Errorf("retryAfter = %v, %v", wait, ok)
	}
	if codeName(codes.OK) != "OK" || codeName(codes.FailedPrecondition) != "FAILED_PRECONDITION" {
		t.Errorf("code names %q %q", codeName(codes.OK), codeName(codes.FailedPrecondition))
	}
	if _, ok := retryAfter(status.Error(codes.Unavailable, "x")); ok {
		t.Error("a hint without RetryInfo")
	}
	tl := newTally(1)
	tl.error(throttled.Err())
	tl.error(throttled.Err())
	if tl.r.ErrorKinds["RESOURCE_EXHAUSTED Throttling.RateQuota"] != 2 {
		t.Errorf("error kinds %v", tl.r.ErrorKinds)
	}
}

func TestAlternateEndsHalfCloseFirst(t *testing.T) {
	s, err := parseSpec(strings.Replace(pythonSpec, `"half-close"`, `"alternate"`, 1))
	if err != nil {
		t.Fatal(err)
	}
	if s.finishes(0) || !s.finishes(1) || s.finishes(2) {
		t.Errorf("alternate: %v %v %v", s.finishes(0), s.finishes(1), s.finishes(2))
	}
	s.End = "finish"
	if !s.finishes(0) {
		t.Error("finish: task 0 half-closes")
	}
}
