package cosyvoice_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/internal/sidecartest"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

const synthesizeMethod = "cosyvoice.sidecar.v1.Synthesizer/Synthesize"

// TestSidecarSpansContinueCallersTrace instruments the client the way a Go
// service does (an OpenTelemetry SDK tracer provider, the otelgrpc stats
// handler, the W3C trace-context propagator), calls a sidecar whose
// console exporter writes its spans to stderr, and reads them back: the
// sidecar's server span must be a child of the caller's client span, in the
// caller's trace, and the call's borrow, synthesis and return spans children
// of that server span. A second call without trace context is the control:
// it must start a trace of its own.
func TestSidecarSpansContinueCallersTrace(t *testing.T) {
	sc := sidecartest.StartForTest(t, sidecartest.Options{
		Env: []string{
			"OTEL_TRACES_EXPORTER=console",
			"COSYVOICE_SIDECAR_LOG_FORMAT=json",
		},
		LogLimit: 4 << 20,
	})

	recorder := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	traced, err := cosyvoice.NewClient(sc.Addr, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
	)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = traced.Close() })
	plain := newClient(t, sc)

	cfg := &sidecarv1.SynthesisConfig{Voice: "longanyang", Format: sidecarv1.AudioFormat_AUDIO_FORMAT_PCM}
	ctx, caller := tp.Tracer("cosyvoice/tracing_test").Start(timeout(t, 30*time.Second), "caller")
	audio, res, err := traced.Synthesize(ctx, "A traced call from a Go service.", cfg)
	caller.End()
	if err != nil {
		t.Fatalf("traced call: %v", err)
	}
	_, plainRes, err := plain.Synthesize(timeout(t, 30*time.Second), "An untraced call.", cfg)
	if err != nil {
		t.Fatalf("untraced call: %v", err)
	}

	traceID := caller.SpanContext().TraceID()
	clientSpan := endedClientSpan(t, recorder, caller.SpanContext())

	// The console exporter batches; stopping the sidecar flushes it.
	if err := sc.Stop(sidecartest.Scale(20 * time.Second)); err != nil {
		t.Fatalf("%v\n--- sidecar stderr ---\n%s", err, sc.Logs())
	}
	if n := sc.LogsDropped(); n > 0 {
		t.Fatalf("the first %d bytes of the sidecar's stderr were dropped; raise LogLimit", n)
	}
	spans, logs := parseStderr(t, sc.Logs())

	// The traced call: server span, child of the caller's client span.
	server := only(t, spans, "server span of the traced call", func(s *consoleSpan) bool {
		return s.Name == synthesizeMethod && s.TraceID() == traceID.String()
	})
	if server.Kind != "SpanKind.SERVER" {
		t.Errorf("server span kind = %q, want SpanKind.SERVER", server.Kind)
	}
	if got, want := server.ParentID(), clientSpan.SpanContext().SpanID().String(); got != want {
		t.Errorf("server span's parent = %q, want the caller's client span %s", got, want)
	}
	if got := server.Attributes["rpc.response.status_code"]; got != "OK" {
		t.Errorf("server span rpc.response.status_code = %v, want OK", got)
	}
	callSpans := map[string]bool{server.SpanID(): true}
	for _, name := range []string{"borrow", "synthesis", "return"} {
		child := only(t, spans, name+" span of the traced call", func(s *consoleSpan) bool {
			return s.Name == name && s.TraceID() == traceID.String()
		})
		if child.ParentID() != server.SpanID() {
			t.Errorf("%s span's parent = %q, want the server span %s", name, child.ParentID(), server.SpanID())
		}
		callSpans[child.SpanID()] = true
		if name == "synthesis" {
			if got, want := child.Attributes["dashscope.task_id"], res.Started.GetTaskId(); got != want {
				t.Errorf("synthesis span dashscope.task_id = %v, want the call's task %s", got, want)
			}
			if got, ok := child.Attributes["cosyvoice.audio.bytes"].(float64); !ok || int(got) != len(audio) {
				t.Errorf("synthesis span cosyvoice.audio.bytes = %v, want the %d bytes the call received",
					child.Attributes["cosyvoice.audio.bytes"], len(audio))
			}
		}
	}

	// The log line naming the traced call's task carries its trace and one
	// of its spans.
	line := onlyLog(t, logs, res.Started.GetTaskId())
	if line.TraceID != traceID.String() || !callSpans[line.SpanID] {
		t.Errorf("log line %q has trace_id=%q span_id=%q, want trace %s and one of the call's spans %v",
			line.Message, line.TraceID, line.SpanID, traceID, callSpans)
	}

	// The control: the untraced call is the root of a trace of its own.
	plainServer := only(t, spans, "server span of the untraced call", func(s *consoleSpan) bool {
		return s.Name == synthesizeMethod && s.TraceID() != traceID.String()
	})
	if plainServer.ParentID() != "" {
		t.Errorf("the untraced call's server span has parent %q, want none", plainServer.ParentID())
	}
	plainSynthesis := only(t, spans, "synthesis span of the untraced call", func(s *consoleSpan) bool {
		return s.Name == "synthesis" && s.TraceID() == plainServer.TraceID()
	})
	if got, want := plainSynthesis.Attributes["dashscope.task_id"], plainRes.Started.GetTaskId(); got != want {
		t.Errorf("untraced synthesis span dashscope.task_id = %v, want %s", got, want)
	}
}

// endedClientSpan waits (bounded) for otelgrpc's client span of the
// Synthesize call made under caller, and returns it.
func endedClientSpan(t *testing.T, rec *tracetest.SpanRecorder, caller trace.SpanContext) sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(sidecartest.Scale(5 * time.Second))
	for {
		var names []string
		for _, s := range rec.Ended() {
			names = append(names, s.Name())
			if s.SpanKind() == trace.SpanKindClient && s.Parent().SpanID() == caller.SpanID() &&
				s.SpanContext().TraceID() == caller.TraceID() && strings.HasSuffix(s.Name(), "/Synthesize") {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ended otelgrpc client span of Synthesize under the caller's span; ended spans: %v", names)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// consoleSpan is the part of a span, as the Python SDK's console exporter
// writes it, that the test reads. Ids are "0x" and lowercase hex.
type consoleSpan struct {
	Name    string `json:"name"`
	Context struct {
		TraceID string `json:"trace_id"`
		SpanID  string `json:"span_id"`
	} `json:"context"`
	Kind       string         `json:"kind"`
	Parent     *string        `json:"parent_id"`
	Attributes map[string]any `json:"attributes"`
}

func (s *consoleSpan) TraceID() string { return strings.TrimPrefix(s.Context.TraceID, "0x") }
func (s *consoleSpan) SpanID() string  { return strings.TrimPrefix(s.Context.SpanID, "0x") }

// ParentID is the parent's span id, "" for a root span.
func (s *consoleSpan) ParentID() string {
	if s.Parent == nil {
		return ""
	}
	return strings.TrimPrefix(*s.Parent, "0x")
}

func (s *consoleSpan) String() string {
	return fmt.Sprintf("%s trace=%s span=%s parent=%s", s.Name, s.TraceID(), s.SpanID(), s.ParentID())
}

// logLine is one line of --log-format json.
type logLine struct {
	Message string `json:"message"`
	TraceID string `json:"trace_id"`
	SpanID  string `json:"span_id"`
}

// parseStderr splits the sidecar's stderr into the console exporter's spans
// (each an indented JSON object from a "{" line to a "}" line) and JSON log
// lines (one object a line). Other lines are ignored.
func parseStderr(t *testing.T, stderr string) ([]*consoleSpan, []*logLine) {
	t.Helper()
	var spans []*consoleSpan
	var logs []*logLine
	var obj strings.Builder
	in := false
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && line == "{":
			in = true
			obj.Reset()
			obj.WriteString(line)
		case in:
			obj.WriteString(line)
			if line == "}" {
				in = false
				s := &consoleSpan{}
				if err := json.Unmarshal([]byte(obj.String()), s); err != nil {
					t.Fatalf("a span on stderr is not JSON: %v\n%s", err, obj.String())
				}
				spans = append(spans, s)
			}
		case strings.HasPrefix(line, "{") && strings.HasSuffix(line, "}"):
			l := &logLine{}
			if err := json.Unmarshal([]byte(line), l); err != nil {
				t.Fatalf("a JSON log line does not parse: %v\n%s", err, line)
			}
			logs = append(logs, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if in {
		t.Fatalf("stderr ends inside a span:\n%s", obj.String())
	}
	if len(spans) == 0 || len(logs) == 0 {
		t.Fatalf("found %d spans and %d JSON log lines on the sidecar's stderr:\n%s", len(spans), len(logs), stderr)
	}
	return spans, logs
}

// only returns the one span that match accepts, failing otherwise.
func only(t *testing.T, spans []*consoleSpan, what string, match func(*consoleSpan) bool) *consoleSpan {
	t.Helper()
	var found []*consoleSpan
	for _, s := range spans {
		if match(s) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one %s, found %d: %v\nall spans: %v", what, len(found), found, spans)
	}
	return found[0]
}

// onlyLog returns the one log line whose message contains text.
func onlyLog(t *testing.T, logs []*logLine, text string) *logLine {
	t.Helper()
	var found []*logLine
	for _, l := range logs {
		if strings.Contains(l.Message, text) {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one log line naming %q, found %d: %v", text, len(found), found)
	}
	return found[0]
}
