package cosyvoice_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/internal/sidecartest"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

// longText takes tens of seconds of audio at real-time pace.
var longText = strings.Repeat("This sentence is long enough to keep the synthesizer busy for a while. ", 20)

func newClient(t *testing.T, sc *sidecartest.Sidecar) *cosyvoice.Client {
	t.Helper()
	c, err := cosyvoice.NewClient(sc.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func timeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sidecartest.Scale(d))
	t.Cleanup(cancel)
	return ctx
}

// upstreamTask waits until the emulator's task of started has ended and
// returns its record.
func upstreamTask(t *testing.T, sc *sidecartest.Sidecar, started *sidecarv1.Started) *sidecartest.Task {
	t.Helper()
	if started.GetTaskId() == "" {
		t.Fatalf("Started has no task_id: %v", started)
	}
	task, err := sc.WaitTask(timeout(t, 10*time.Second), started.GetTaskId(), sidecartest.Ended)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

// sameAudio fails unless audio is byte for byte what the emulator sent for
// task (length and sha256).
func sameAudio(t *testing.T, audio []byte, task *sidecartest.Task) {
	t.Helper()
	sum := sha256.Sum256(audio)
	if len(audio) != task.AudioBytes || hex.EncodeToString(sum[:]) != task.AudioSHA256 {
		t.Fatalf("audio differs from the upstream's: got %d bytes sha256 %x, upstream sent %d bytes sha256 %s",
			len(audio), sum, task.AudioBytes, task.AudioSHA256)
	}
	if len(audio) == 0 {
		t.Fatal("no audio at all")
	}
}

func TestStreamingAudioEqualsUpstreamInOrder(t *testing.T) {
	sc := sidecartest.Get(t)
	client := newClient(t, sc)
	ctx := metadata.AppendToOutgoingContext(timeout(t, 30*time.Second), "x-request-id", "go-stream-1")
	cfg := &sidecarv1.SynthesisConfig{
		Model:        "cosyvoice-v3-flash",
		Voice:        "longanyang",
		Format:       sidecarv1.AudioFormat_AUDIO_FORMAT_PCM,
		SampleRateHz: 16000,
		Volume:       proto.Int32(60),
	}
	st, err := client.Stream(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sendErr := make(chan error, 1)
	go func() {
		for _, frag := range []string{"Streaming text arrives ", "in fragments, ", "and audio comes back."} {
			if err := st.SendText(frag); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- st.Finish()
	}()

	var (
		responses []*sidecarv1.SynthesizeResponse
		audio     []byte
		chunkMs   float64
	)
	for {
		resp, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d responses: %v", len(responses), err)
		}
		if a := resp.GetAudio(); a != nil {
			// Checked here too, independently of the client's own check.
			n := 0
			for _, r := range responses {
				if r.GetAudio() != nil {
					n++
				}
			}
			if a.GetSequence() != uint64(n) {
				t.Fatalf("audio chunk sequence %d, want %d", a.GetSequence(), n)
			}
			audio = append(audio, a.GetData()...)
			chunkMs += a.GetDurationMs()
		}
		responses = append(responses, resp)
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("send side: %v", err)
	}

	if len(responses) < 3 {
		t.Fatalf("only %d responses", len(responses))
	}
	started := responses[0].GetStarted()
	completed := responses[len(responses)-1].GetCompleted()
	if started == nil || completed == nil {
		t.Fatalf("want started first and completed last, got %T ... %T",
			responses[0].GetResponse(), responses[len(responses)-1].GetResponse())
	}
	if r := st.Result(); r.Started != started || r.Completed != completed {
		t.Error("Result() does not hold the started and completed responses")
	}
	for _, r := range responses[1 : len(responses)-1] {
		if r.GetStarted() != nil || r.GetCompleted() != nil {
			t.Fatalf("a second started/completed in the middle: %v", r)
		}
	}

	// Started: what the call resolved to, and the request id we sent.
	if started.GetRequestId() != "go-stream-1" {
		t.Errorf("Started.request_id = %q, want the x-request-id %q", started.GetRequestId(), "go-stream-1")
	}
	if started.GetFormat() != sidecarv1.AudioFormat_AUDIO_FORMAT_PCM || started.GetSampleRateHz() != 16000 ||
		started.GetModel() != cfg.Model || started.GetVoice() != cfg.Voice {
		t.Errorf("Started does not echo the resolved config: %v", started)
	}
	if started.GetPoolWaitMs() < 0 {
		t.Errorf("Started.pool_wait_ms = %v", started.GetPoolWaitMs())
	}
	if md, err := st.Header(); err != nil || len(md.Get("x-request-id")) != 1 || md.Get("x-request-id")[0] != "go-stream-1" {
		t.Errorf("response header x-request-id: %v (err %v)", md.Get("x-request-id"), err)
	}

	// The upstream task: our config reached it, and its audio reached us unchanged.
	task := upstreamTask(t, sc, started)
	if task.Outcome != "finished" {
		t.Errorf("upstream outcome %q, want finished", task.Outcome)
	}
	if task.Model != cfg.Model || task.Voice != cfg.Voice || task.Format != "pcm" || task.SampleRate != 16000 {
		t.Errorf("upstream task got model=%s voice=%s format=%s rate=%d", task.Model, task.Voice, task.Format, task.SampleRate)
	}
	sameAudio(t, audio, task)

	// Completed: the totals agree with what arrived.
	chunks := 0
	for _, r := range responses {
		if r.GetAudio() != nil {
			chunks++
		}
	}
	if completed.GetAudioBytes() != uint64(len(audio)) || completed.GetAudioChunks() != uint64(chunks) {
		t.Errorf("Completed says %d bytes in %d chunks, received %d in %d",
			completed.GetAudioBytes(), completed.GetAudioChunks(), len(audio), chunks)
	}
	wantMs := float64(len(audio)) / 2 / 16000 * 1000
	if math.Abs(completed.GetAudioDurationMs()-wantMs) > 1 || math.Abs(chunkMs-wantMs) > 1 {
		t.Errorf("audio duration: Completed %.1f ms, chunks sum %.1f ms, want %.1f ms", completed.GetAudioDurationMs(), chunkMs, wantMs)
	}
	if completed.GetFirstAudioMs() <= 0 || completed.GetFirstAudioMs() > 30000 {
		t.Errorf("Completed.first_audio_ms = %v", completed.GetFirstAudioMs())
	}
	if int(completed.GetBilledCharacters()) != task.Characters || task.Characters == 0 {
		t.Errorf("Completed.billed_characters = %d, upstream counted %d", completed.GetBilledCharacters(), task.Characters)
	}
}

// A flush is acknowledged in order with the audio (audio_chunks_before
// counts the chunks received before the acknowledgement), and the flushed
// text is spoken before the stream finishes.
func TestFlushIsAcknowledgedAndSpeaksBufferedText(t *testing.T) {
	sc := sidecartest.Get(t)
	client := newClient(t, sc)
	st, err := client.Stream(timeout(t, 30*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendText("Half a sentence without an end"); err != nil {
		t.Fatal(err)
	}
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	chunks := uint64(0)
	flushed := false
	// No finish yet: only the flush can make this audio come.
	for !flushed || chunks == 0 {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv after the flush (acknowledged: %v, %d audio chunks): %v", flushed, chunks, err)
		}
		if resp.GetAudio() != nil {
			chunks++
		}
		if f := resp.GetFlushed(); f != nil {
			if flushed {
				t.Fatal("a second flush acknowledgement")
			}
			flushed = true
			if f.GetAudioChunksBefore() != chunks {
				t.Errorf("flushed.audio_chunks_before = %d, %d audio chunks arrived before it", f.GetAudioChunksBefore(), chunks)
			}
		}
	}
	if err := st.SendText(" and the rest of it."); err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(); err != nil {
		t.Fatal(err)
	}
	var audio []byte
	for chunk, err := range st.Audio() {
		if err != nil {
			t.Fatal(err)
		}
		audio = append(audio, chunk...)
	}
	if c := st.Result().Completed; c == nil || c.GetAudioChunks() <= chunks || len(audio) == 0 {
		t.Errorf("after the flush: %d more bytes, completed %v", len(audio), c)
	}
}

func TestSynthesizeOneShot(t *testing.T) {
	sc := sidecartest.Get(t)
	client := newClient(t, sc)
	audio, res, err := client.Synthesize(timeout(t, 30*time.Second), "One call, one text, one audio.", nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Started == nil || res.Completed == nil {
		t.Fatalf("Result without started/completed: %+v", res)
	}
	if res.Started.GetFormat() == sidecarv1.AudioFormat_AUDIO_FORMAT_UNSPECIFIED || res.Started.GetSampleRateHz() <= 0 ||
		res.Started.GetModel() == "" || res.Started.GetVoice() == "" || res.Started.GetRequestId() == "" {
		t.Errorf("Started not filled in: %v", res.Started)
	}
	task := upstreamTask(t, sc, res.Started)
	sameAudio(t, audio, task)
	if task.Outcome != "finished" || task.Model != res.Started.GetModel() || task.Voice != res.Started.GetVoice() ||
		task.SampleRate != int(res.Started.GetSampleRateHz()) {
		t.Errorf("upstream task %+v does not match Started %v", task, res.Started)
	}
	if res.Completed.GetAudioBytes() != uint64(len(audio)) {
		t.Errorf("Completed.audio_bytes = %d, received %d", res.Completed.GetAudioBytes(), len(audio))
	}
}

// slowUpstream makes the emulator send audio at real-time pace, so that a
// long text is still being synthesized when the test interrupts it.
func slowUpstream(t *testing.T, sc *sidecartest.Sidecar) {
	sc.SetKnob(t, "realtime_factor", "1.0")
}

// interrupted fails unless the upstream task ends cancelled or abandoned.
func interrupted(t *testing.T, sc *sidecartest.Sidecar, started *sidecarv1.Started) {
	t.Helper()
	task, err := sc.WaitTask(timeout(t, 10*time.Second), started.GetTaskId(), sidecartest.Ended)
	if err != nil {
		t.Fatalf("the upstream did not see the interruption: %v", err)
	}
	if task.Outcome != "cancelled" && task.Outcome != "abandoned" {
		t.Fatalf("upstream outcome %q, want cancelled or abandoned", task.Outcome)
	}
}

func TestCancelledContextCancelsUpstream(t *testing.T) {
	sc := sidecartest.Get(t)
	slowUpstream(t, sc)
	client := newClient(t, sc)
	ctx, cancel := context.WithCancel(timeout(t, 60*time.Second))
	defer cancel()
	st, err := client.Stream(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendText(longText); err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv before the first audio: %v", err)
		}
		if resp.GetAudio() != nil {
			break
		}
	}
	started := st.Result().Started
	cancel()
	for {
		_, err := st.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Canceled {
			t.Fatalf("Recv after cancel: %v, want codes.Canceled", err)
		}
		break
	}
	interrupted(t, sc, started)
}

func TestBreakingOutOfAudioCancelsUpstream(t *testing.T) {
	sc := sidecartest.Get(t)
	slowUpstream(t, sc)
	client := newClient(t, sc)
	st, err := client.Stream(timeout(t, 60*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendText(longText); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for _, err := range st.Audio() {
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	interrupted(t, sc, st.Result().Started)
}

func TestDeadlineExceeded(t *testing.T) {
	sc := sidecartest.Get(t)
	slowUpstream(t, sc)
	client := newClient(t, sc)
	ctx, cancel := context.WithTimeout(context.Background(), sidecartest.Scale(2*time.Second))
	defer cancel()
	start := time.Now()
	_, res, err := client.Synthesize(ctx, longText, nil)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Synthesize on a slow upstream past its deadline: %v, want codes.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > sidecartest.Scale(5*time.Second) {
		t.Errorf("the deadline error came after %v", elapsed)
	}
	if res.Started == nil {
		t.Fatal("no Started within the deadline, so the upstream side cannot be checked")
	}
	interrupted(t, sc, res.Started)
}

func TestInvalidArgumentKeepsCodeAndMessage(t *testing.T) {
	sc := sidecartest.Get(t)
	client := newClient(t, sc)
	bad := &sidecarv1.SynthesisConfig{Volume: proto.Int32(101)}
	check := func(t *testing.T, err error) {
		t.Helper()
		s, ok := status.FromError(err)
		if !ok || s.Code() != codes.InvalidArgument || !strings.Contains(s.Message(), "config.volume") {
			t.Fatalf("got %v, want an InvalidArgument status naming config.volume", err)
		}
	}
	t.Run("Synthesize", func(t *testing.T) {
		_, _, err := client.Synthesize(timeout(t, 20*time.Second), "Too loud.", bad)
		check(t, err)
	})
	t.Run("Stream", func(t *testing.T) {
		st, err := client.Stream(timeout(t, 20*time.Second), bad)
		if err != nil {
			check(t, err)
			return
		}
		_ = st.SendText("Too loud.")
		_ = st.Finish()
		var recvErr error
		for _, recvErr = range st.Audio() {
			if recvErr == nil {
				t.Fatal("audio for an invalid request")
			}
		}
		check(t, recvErr)
	})
}

func TestUpstreamRejectionKeepsDashScopeCode(t *testing.T) {
	sc := sidecartest.Get(t)
	client := newClient(t, sc)
	_, _, err := client.Synthesize(timeout(t, 20*time.Second), "Not with this voice.",
		&sidecarv1.SynthesisConfig{Voice: "bad-voice"})
	s := status.Convert(err)
	if err == nil || s.Code() != codes.InvalidArgument || !strings.Contains(s.Message(), "InvalidParameter") {
		t.Fatalf("got %v, want InvalidArgument carrying DashScope's InvalidParameter", err)
	}
}

func TestWAVHeader(t *testing.T) {
	pcm := []byte{1, 0, 2, 0, 3, 0}
	wav := cosyvoice.WAV(pcm, 22050)
	le := binary.LittleEndian
	if len(wav) != cosyvoice.WAVHeaderSize+len(pcm) || string(wav[0:4]) != "RIFF" || string(wav[8:16]) != "WAVEfmt " ||
		string(wav[36:40]) != "data" {
		t.Fatalf("bad header % x", wav[:cosyvoice.WAVHeaderSize])
	}
	if le.Uint32(wav[4:]) != uint32(len(wav)-8) || le.Uint16(wav[20:]) != 1 || le.Uint16(wav[22:]) != 1 ||
		le.Uint32(wav[24:]) != 22050 || le.Uint32(wav[28:]) != 44100 || le.Uint16(wav[32:]) != 2 ||
		le.Uint16(wav[34:]) != 16 || le.Uint32(wav[40:]) != uint32(len(pcm)) {
		t.Fatalf("bad header fields % x", wav[:cosyvoice.WAVHeaderSize])
	}
	if string(wav[cosyvoice.WAVHeaderSize:]) != string(pcm) {
		t.Fatal("samples changed")
	}
}
