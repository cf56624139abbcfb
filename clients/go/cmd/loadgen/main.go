// Command loadgen is the benchmark's gRPC load generator: the Go twin of
// the grpc-stream and grpc-unary modes of the Python bench worker
// (bench/cosyvoice_sidecar_bench/worker.py), which `cosyvoice-sidecar bench` runs in its
// place by default (`--loadgen go`).
//
//	loadgen SPEC_JSON
//
// SPEC_JSON is the worker spec the bench writes (WorkerSpec.to_json): mode,
// level, target (the sidecar's host:port), the workload (text, fragments,
// sample rate, expected audio bytes), ramp, duration and task timeout. The
// protocol is the Python worker's, line for line:
//
//  1. connect, then print {"event": "ready", "warmup_s": null, "warmup_sockets": 0};
//  2. wait for one line on standard input (the start signal);
//  3. run level closed-loop workers: worker i starts at ramp*i/level and
//     starts a new task as soon as its previous one ended, until ramp +
//     duration seconds have passed; every task is bounded by the task timeout;
//  4. print one {"event": "result", ...} line with the same keys and units as
//     the Python worker's result (lists of milliseconds rounded to 3 decimals,
//     seconds, MiB) and exit 0.
//
// Nothing else goes to standard output; problems go to standard error.
//
// A grpc-stream task sends the config and the workload's fragments, then
// ends its input as the spec's end says: "half-close" (CloseSend, what every
// gRPC caller does), "finish" (the Finish message, then CloseSend), or
// "alternate" (half-close on a worker's even tasks, finish on its odd ones,
// each kind's time to first audio recorded apart in the breakdown); then it
// reads. A grpc-unary task calls Synthesize with the whole text. Both ask
// for pcm at the workload's sample rate and leave model and voice to the
// sidecar, as the Python worker does. A task counts as an error when the
// call fails, returns no audio or breaks the response contract (counted by
// kind too: the status code and the ErrorInfo reason, e.g.
// "RESOURCE_EXHAUSTED Throttling.RateQuota"), and as an audio mismatch when
// its audio bytes differ from the expected length. A worker stops after
// max_tasks tasks when that is set, and with honor_retry it waits out a
// failed task's RetryInfo (at most 5 s) before its next one.
// Measured per task: the time from the call's start to its first audio
// chunk (TTFB), the gaps between audio chunks, and two breakdown samples:
// when Started arrived (client_started_ms) and the sidecar's own
// Completed.first_audio_ms (server_first_audio_ms). The process's own CPU
// seconds over the window and its peak RSS are reported too, so the bench
// can say what the load generator cost.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

const (
	maxErrorSamples = 5   // as the Python worker's _MAX_ERROR_SAMPLES
	maxErrorChars   = 300 // error samples are cut to this many characters
	connectTimeout  = 10 * time.Second
	maxRetryWait    = 5 * time.Second // a longer RetryInfo hint is cut to this
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// Workload mirrors cosyvoice_sidecar_bench.workload.Workload. Only text, fragments,
// sample_rate and expected_bytes matter to the gRPC modes; the other fields
// are declared so that decoding stays strict (a field the bench adds later
// fails here instead of being ignored).
type Workload struct {
	Text          string         `json:"text"`
	Fragments     []string       `json:"fragments"`
	SampleRate    int32          `json:"sample_rate"`
	Model         string         `json:"model"`
	Voice         string         `json:"voice"`
	ExpectedBytes int            `json:"expected_bytes"`
	IntrinsicMs   float64        `json:"intrinsic_ms"`
	AudioMs       float64        `json:"audio_ms"`
	Parameters    map[string]any `json:"parameters"`
}

// Spec mirrors cosyvoice_sidecar_bench.worker.WorkerSpec.
type Spec struct {
	Mode         string   `json:"mode"`
	Level        int      `json:"level"`
	Target       string   `json:"target"`
	Workload     Workload `json:"workload"`
	RampS        float64  `json:"ramp_s"`
	DurationS    float64  `json:"duration_s"`
	TaskTimeoutS float64  `json:"task_timeout_s"`
	APIKey       string   `json:"api_key"` // the upstream's; the sidecar holds its own
	End          string   `json:"end"`     // "half-close", "finish" or "alternate"
	MaxTasks     int      `json:"max_tasks"`
	HonorRetry   bool     `json:"honor_retry"`
}

// parseSpec decodes the spec strictly and checks what the run relies on.
func parseSpec(text string) (*Spec, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(text)))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("bad spec: %w", err)
	}
	if dec.More() {
		return nil, errors.New("bad spec: more than one JSON value")
	}
	switch {
	case s.Mode != "grpc-stream" && s.Mode != "grpc-unary":
		return nil, fmt.Errorf("unknown worker mode %q (this load generator runs grpc-stream and grpc-unary)", s.Mode)
	case s.Level < 1:
		return nil, fmt.Errorf("level must be >= 1, not %d", s.Level)
	case s.Target == "":
		return nil, errors.New("no target")
	case s.TaskTimeoutS <= 0 || s.DurationS < 0 || s.RampS < 0:
		return nil, errors.New("ramp and duration must be >= 0 and the task timeout > 0")
	case s.Mode == "grpc-stream" && len(s.Workload.Fragments) == 0:
		return nil, errors.New("the workload has no fragments")
	case s.End != "half-close" && s.End != "finish" && s.End != "alternate":
		return nil, fmt.Errorf("end must be half-close, finish or alternate, not %q", s.End)
	case s.MaxTasks < 0:
		return nil, errors.New("max_tasks must be >= 0")
	}
	return &s, nil
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}

// offsets returns when each worker starts after the start signal:
// ramp*i/level, as the Python worker's _offsets.
func (s *Spec) offsets() []time.Duration {
	out := make([]time.Duration, s.Level)
	for i := range out {
		out[i] = seconds(s.RampS * float64(i) / float64(s.Level))
	}
	return out
}

// ms converts a duration to milliseconds rounded to 3 decimals, as the
// Python worker's round(seconds * 1000, 3).
func ms(d time.Duration) float64 {
	return roundMs(float64(d) / float64(time.Millisecond))
}

func roundMs(v float64) float64 {
	return math.Round(v*1000) / 1000
}

// Result is the "result" line; field order and names are the Python
// worker's _result. Lists are never null.
type Result struct {
	Event           string               `json:"event"`
	Tasks           int                  `json:"tasks"`
	Errors          int                  `json:"errors"`
	AudioMismatches int                  `json:"audio_mismatches"`
	ErrorSamples    []string             `json:"error_samples"`
	ErrorKinds      map[string]int       `json:"error_kinds"`
	TTFBMs          []float64            `json:"ttfb_ms"`
	GapsMs          []float64            `json:"gaps_ms"`
	Breakdown       map[string][]float64 `json:"breakdown"`
	ElapsedS        float64              `json:"elapsed_s"`
	CPUS            float64              `json:"cpu_s"`
	PeakRSSMB       float64              `json:"peak_rss_mb"`
}

// tally collects what the workers saw; every method is safe for concurrent
// use.
type tally struct {
	mu       sync.Mutex
	expected int
	r        Result
}

func newTally(expected int) *tally {
	return &tally{expected: expected, r: Result{
		Event:        "result",
		ErrorSamples: []string{},
		ErrorKinds:   map[string]int{},
		TTFBMs:       []float64{},
		GapsMs:       []float64{},
		Breakdown:    map[string][]float64{},
	}}
}

func (t *tally) ok(ttfb time.Duration, gaps []time.Duration, nbytes int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Tasks++
	if nbytes != t.expected {
		t.r.AudioMismatches++
		t.sample(fmt.Sprintf("%d audio bytes, expected %d", nbytes, t.expected))
	}
	t.r.TTFBMs = append(t.r.TTFBMs, ms(ttfb))
	for _, g := range gaps {
		t.r.GapsMs = append(t.r.GapsMs, ms(g))
	}
}

func (t *tally) error(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Tasks++
	t.r.Errors++
	t.r.ErrorKinds[kind(err)]++
	t.sample(describe(err))
}

// ttfbBy records a task's time to first audio under how it ended its input.
func (t *tally) ttfbBy(end string, ttfb time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := "ttfb_" + end + "_ms"
	t.r.Breakdown[key] = append(t.r.Breakdown[key], ms(ttfb))
}

// breakdown records a task's Completed figure and when its Started arrived.
func (t *tally) breakdown(serverFirstAudioMs float64, started time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Breakdown["server_first_audio_ms"] = append(t.r.Breakdown["server_first_audio_ms"], roundMs(serverFirstAudioMs))
	t.r.Breakdown["client_started_ms"] = append(t.r.Breakdown["client_started_ms"], ms(started))
}

func (t *tally) sample(text string) {
	if len(t.r.ErrorSamples) >= maxErrorSamples {
		return
	}
	if utf8.RuneCountInString(text) > maxErrorChars {
		text = string([]rune(text)[:maxErrorChars])
	}
	t.r.ErrorSamples = append(t.r.ErrorSamples, text)
}

// describe renders an error as the Python worker's "Type: message": the
// gRPC code for a status (e.g. "DeadlineExceeded: context deadline exceeded").
func describe(err error) string {
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", s.Code(), s.Message())
	}
	return "error: " + err.Error()
}

// kind names a failure as the Python worker does: the status code as gRPC
// spells it everywhere but Go ("RESOURCE_EXHAUSTED"), then the ErrorInfo
// reason if there is one; a failure that is no status is "error".
func kind(err error) string {
	s, ok := status.FromError(err)
	if !ok {
		return "error"
	}
	name := codeName(s.Code())
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return name + " " + info.GetReason()
		}
	}
	return name
}

// codeName turns Go's "ResourceExhausted" into "RESOURCE_EXHAUSTED" (and
// "OK" into "OK").
func codeName(c codes.Code) string {
	var b []rune
	prev := 'A'
	for _, r := range c.String() {
		if unicode.IsUpper(r) && unicode.IsLower(prev) {
			b = append(b, '_')
		}
		b = append(b, unicode.ToUpper(r))
		prev = r
	}
	return string(b)
}

// retryAfter returns a failure's RetryInfo hint, if it has one.
func retryAfter(err error) (time.Duration, bool) {
	s, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// timer collects the arrival times of one task's audio chunks.
type timer struct {
	start, first, last time.Time
	gaps               []time.Duration
	nbytes             int
}

func newTimer() *timer { return &timer{start: time.Now()} }

func (t *timer) audio(size int) {
	now := time.Now()
	if t.first.IsZero() {
		t.first = now
	} else {
		t.gaps = append(t.gaps, now.Sub(t.last))
	}
	t.last = now
	t.nbytes += size
}

func (t *timer) record(tl *tally) {
	if t.first.IsZero() {
		tl.error(errors.New("the task ended without audio"))
		return
	}
	tl.ok(t.first.Sub(t.start), t.gaps, t.nbytes)
}

// gen runs the tasks of one spec over one connection.
type gen struct {
	spec   *Spec
	client *cosyvoice.Client           // StreamingSynthesize, with the module's contract checks
	api    sidecarv1.SynthesizerClient // Synthesize, whose chunks the helper does not expose one by one
	config *sidecarv1.SynthesisConfig  // pcm at the workload's rate; model and voice: the sidecar's
	tally  *tally
}

// read consumes one call's responses up to its end and records the task.
func (g *gen) read(recv func() (*sidecarv1.SynthesizeResponse, error), t *timer) error {
	var started time.Duration
	completed := false
	for {
		resp, err := recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		switch m := resp.GetResponse().(type) {
		case *sidecarv1.SynthesizeResponse_Audio:
			t.audio(len(m.Audio.GetData()))
		case *sidecarv1.SynthesizeResponse_Started:
			started = time.Since(t.start)
		case *sidecarv1.SynthesizeResponse_Completed:
			// The sidecar's own clock: from its session's start to the first
			// audio byte from upstream.
			completed = true
			g.tally.breakdown(m.Completed.GetFirstAudioMs(), started)
		}
	}
	if !completed {
		return status.Error(codes.Internal, "the call ended without a completed response")
	}
	t.record(g.tally)
	return nil
}

// finishes says whether task k of a worker sends Finish before half-closing.
func (s *Spec) finishes(k int) bool {
	return s.End == "finish" || (s.End == "alternate" && k%2 == 1)
}

func (g *gen) streamTask(ctx context.Context, k int) error {
	t := newTimer()
	stream, err := g.client.Stream(ctx, g.config)
	if err != nil {
		return err
	}
	defer stream.Cancel()
	for _, fragment := range g.spec.Workload.Fragments {
		if err := stream.SendText(fragment); err != nil {
			if err == io.EOF {
				break // the sidecar ended the call; Recv says why
			}
			return err
		}
	}
	end := stream.CloseSend // the half-close: how gRPC callers end their input
	if g.spec.finishes(k) {
		end = stream.Finish // the Finish message, then the half-close
	}
	if err := end(); err != nil && err != io.EOF {
		return err
	}
	if err := g.read(stream.Recv, t); err != nil {
		return err
	}
	if g.spec.End == "alternate" && !t.first.IsZero() {
		name := "half-close"
		if g.spec.finishes(k) {
			name = "finish"
		}
		g.tally.ttfbBy(name, t.first.Sub(t.start))
	}
	return nil
}

func (g *gen) unaryTask(ctx context.Context, k int) error {
	t := newTimer()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	call, err := g.api.Synthesize(ctx, &sidecarv1.SynthesizeRequest{Config: g.config, Text: g.spec.Workload.Text})
	if err != nil {
		return err
	}
	return g.read(call.Recv, t)
}

// closedLoop runs level workers from start until ramp + duration have
// passed, then waits for their last tasks; the tally holds what they saw.
func (g *gen) closedLoop(start time.Time) {
	one := g.streamTask
	if g.spec.Mode == "grpc-unary" {
		one = g.unaryTask
	}
	timeout := seconds(g.spec.TaskTimeoutS)
	stopAt := start.Add(seconds(g.spec.RampS + g.spec.DurationS))
	var wg sync.WaitGroup
	for _, offset := range g.spec.offsets() {
		wg.Go(func() {
			time.Sleep(time.Until(start.Add(offset)))
			for k := 0; time.Now().Before(stopAt) && (g.spec.MaxTasks == 0 || k < g.spec.MaxTasks); k++ {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				err := one(ctx, k)
				cancel()
				if err == nil {
					continue
				}
				g.tally.error(err)
				if wait, ok := retryAfter(err); ok && g.spec.HonorRetry {
					time.Sleep(min(wait, maxRetryWait, time.Until(stopAt)))
				}
			}
		})
	}
	wg.Wait()
}

// dial opens the one connection every worker shares and waits until it is
// ready (as the Python worker waits for channel_ready, within 10 s).
//
// One connection, like the Python worker's one channel and like a real Go
// caller sharing one cosyvoice.Client per sidecar, with the flow-control
// windows cosyvoice.NewClient sets (cosyvoice.DialOptions). HTTP/2 caps the streams
// of a connection at the server's SETTINGS_MAX_CONCURRENT_STREAMS; the
// sidecar (grpc C-core, sidecar/server.py) does not set it, and gRPC-Go
// treats a first SETTINGS frame without it as unlimited (before that frame
// it assumes 100, which is why the start waits for READY: the transport is
// ready only after the server's settings arrived). The bench's 400 streams
// therefore fit on one connection; the sidecar's own --max-streams admission
// is what bounds them, and the bench sets it above the level.
func dial(target string) (*grpc.ClientConn, error) {
	// With the client package's options, as cosyvoice.NewClient dials, but no
	// retries: the bench counts every refusal, which a retry would hide.
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cosyvoice.DialOptions()...)
	opts = append(opts, grpc.WithDisableRetry())
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn.Connect()
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if !conn.WaitForStateChange(ctx, state) {
			conn.Close()
			return nil, fmt.Errorf("no connection to %s within %s (last state %s)", target, connectTimeout, state)
		}
	}
	return conn, nil
}

func emit(w io.Writer, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(line, '\n'))
	return err
}

// run is the whole command, with its I/O passed in; it returns the exit
// status: 0 after the result line, 2 for bad usage, 1 otherwise.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: loadgen SPEC_JSON")
		return 2
	}
	spec, err := parseSpec(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 2
	}
	conn, err := dial(spec.Target)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	defer conn.Close()
	g := &gen{
		spec:   spec,
		client: cosyvoice.New(conn),
		api:    sidecarv1.NewSynthesizerClient(conn),
		config: &sidecarv1.SynthesisConfig{
			Format:       sidecarv1.AudioFormat_AUDIO_FORMAT_PCM,
			SampleRateHz: spec.Workload.SampleRate,
		},
		tally: newTally(spec.Workload.ExpectedBytes),
	}
	ready := map[string]any{"event": "ready", "warmup_s": nil, "warmup_sockets": 0}
	if err := emit(stdout, ready); err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	if _, err := bufio.NewReader(stdin).ReadString('\n'); err != nil {
		fmt.Fprintln(stderr, "loadgen: the bench closed stdin before the start signal")
		return 1
	}

	start := time.Now()
	cpuStart := cpuSeconds()
	g.closedLoop(start)
	g.tally.mu.Lock()
	result := g.tally.r
	g.tally.mu.Unlock()
	result.ElapsedS = time.Since(start).Seconds()
	result.CPUS = cpuSeconds() - cpuStart
	result.PeakRSSMB = peakRSSMiB()
	if err := emit(stdout, result); err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	return 0
}
