package cosyvoice_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/internal/sidecartest"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

// A sidecar with one upstream connection and a short wait for it, so that a
// second call is refused RESOURCE_EXHAUSTED while a first one holds it.
func startPoolOfOne(t *testing.T) *sidecartest.Sidecar {
	t.Helper()
	wait := sidecartest.Scale(500 * time.Millisecond).Seconds()
	return sidecartest.StartForTest(t, sidecartest.Options{Args: []string{
		"--pool-min-idle", "1", "--pool-max-size", "1", "--acquire-timeout", fmt.Sprintf("%.3f", wait),
	}})
}

// holdTheOnlyConnection opens a stream that holds the pool's connection
// until it is finished, and returns it once Started arrived.
func holdTheOnlyConnection(t *testing.T, client *cosyvoice.Client) *cosyvoice.Stream {
	t.Helper()
	holder, err := client.Stream(timeout(t, 60*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.SendText("Holding the only connection."); err != nil {
		t.Fatal(err)
	}
	if resp, err := holder.Recv(); err != nil || resp.GetStarted() == nil {
		t.Fatalf("holder: want Started first, got %v, %v", resp, err)
	}
	return holder
}

// release finishes the holder and reads it to its end.
func release(t *testing.T, holder *cosyvoice.Stream) {
	t.Helper()
	if err := holder.Finish(); err != nil {
		t.Fatal(err)
	}
	for _, err := range holder.Audio() {
		if err != nil {
			t.Fatalf("holder: %v", err)
		}
	}
}

// waitRefusedOnce waits until a call has waited for a connection and given
// up, reading the pool through SidecarStatus, and returns when it saw that.
func waitRefusedOnce(t *testing.T, sc *sidecartest.Sidecar) time.Time {
	t.Helper()
	conn, err := grpc.NewClient(sc.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := sidecarv1.NewSidecarStatusClient(conn)
	ctx := timeout(t, 20*time.Second)
	waitFor := func(what string, want uint32) {
		for {
			st, err := api.GetStatus(ctx, &sidecarv1.GetStatusRequest{})
			if err != nil {
				t.Fatalf("waiting for %s: %v", what, err)
			}
			if st.GetPool().GetWaiters() == want {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("a call waiting for the connection", 1)
	waitFor("the wait given up", 0)
	return time.Now()
}

// A call refused RESOURCE_EXHAUSTED is retried after the sidecar's 1 s
// pushback and succeeds; without the pushback gRPC would retry within its
// 0.1 s initial backoff, while the pool is still busy. With retries off,
// the refusal arrives with its pushback and request id in the trailer.
func TestRefusedCallRetriesAfterPushback(t *testing.T) {
	sc := startPoolOfOne(t)
	t.Run("retried", func(t *testing.T) {
		client := newClient(t, sc)
		holder := holdTheOnlyConnection(t, client)
		type result struct {
			audio []byte
			res   *cosyvoice.Result
			err   error
		}
		done := make(chan result, 1)
		go func() {
			audio, res, err := client.Synthesize(timeout(t, 60*time.Second), "Second in line.", nil)
			done <- result{audio, res, err}
		}()
		refusedAt := waitRefusedOnce(t, sc)
		release(t, holder)
		r := <-done
		if r.err != nil {
			t.Fatalf("the refused call was not retried to success: %v", r.err)
		}
		if waited := time.Since(refusedAt); waited < 900*time.Millisecond {
			t.Errorf("retried %v after the refusal, before the 1 s pushback", waited)
		}
		sameAudio(t, r.audio, upstreamTask(t, sc, r.res.Started))
	})
	t.Run("retries off", func(t *testing.T) {
		client, err := cosyvoice.NewClient(sc.Addr, grpc.WithDisableRetry())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		holder := holdTheOnlyConnection(t, client)
		defer release(t, holder)
		ctx := metadata.AppendToOutgoingContext(timeout(t, 30*time.Second), "x-request-id", "go-refused-1")
		st, err := client.Stream(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = st.SendText("Refused.")
		_ = st.Finish()
		_, err = st.Recv()
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("got %v, want ResourceExhausted", err)
		}
		if md, _ := st.Header(); len(md) != 0 {
			t.Errorf("a refused call has response headers: %v", md)
		}
		tr := st.Trailer()
		if got := tr.Get("grpc-retry-pushback-ms"); len(got) != 1 || got[0] != "1000" {
			t.Errorf("trailer grpc-retry-pushback-ms = %v, want [1000]", got)
		}
		if got := tr.Get("x-request-id"); len(got) != 1 || got[0] != "go-refused-1" {
			t.Errorf("trailer x-request-id = %v, want [go-refused-1]", got)
		}
	})
}

// A call that fails after audio has flowed ends UNAVAILABLE and is never
// sent again: the emulator sees one task.
func TestCallFailingAfterAudioIsNotRetried(t *testing.T) {
	sc := sidecartest.Get(t)
	client := newClient(t, sc)
	before, err := sc.Stats(timeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	sc.SetKnob(t, "fail_mid_every", "1")
	st, err := client.Stream(timeout(t, 30*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendText("This will break after the first audio."); err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(); err != nil {
		t.Fatal(err)
	}
	chunks := 0
	var recvErr error
	for _, recvErr = range st.Audio() {
		if recvErr == nil {
			chunks++
		}
	}
	if status.Code(recvErr) != codes.Unavailable || chunks == 0 {
		t.Fatalf("got %v after %d audio chunks, want Unavailable after audio", recvErr, chunks)
	}
	if got := st.Trailer().Get("grpc-retry-pushback-ms"); len(got) != 0 {
		t.Errorf("a failure after audio asks for a retry: grpc-retry-pushback-ms %v", got)
	}
	time.Sleep(sidecartest.Scale(time.Second)) // ample time for a retry that must not come
	after, err := sc.Stats(timeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(after.Tasks) - len(before.Tasks); n != 1 {
		t.Fatalf("the emulator saw %d tasks for one call, want 1", n)
	}
}

// Sends after Finish fail locally with ErrSendClosed, and the call still
// delivers all of its audio and Completed (issue 15).
func TestSendAfterFinishFailsLocally(t *testing.T) {
	sc := sidecartest.Get(t)
	client := newClient(t, sc)
	st, err := client.Stream(timeout(t, 30*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendText("Everything there is to say."); err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(); err != nil {
		t.Fatal(err)
	}
	for name, send := range map[string]func() error{
		"SendText": func() error { return st.SendText("One more thing.") },
		"Flush":    st.Flush,
		"Finish":   st.Finish,
	} {
		err := send()
		if !errors.Is(err, cosyvoice.ErrSendClosed) || !strings.Contains(err.Error(), name+" after Finish") {
			t.Errorf("%s after Finish: %v, want an error naming it and wrapping ErrSendClosed", name, err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Errorf("CloseSend after Finish: %v, want nil", err)
	}
	var audio []byte
	for {
		resp, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the call broke after the local misuse: %v", err)
		}
		audio = append(audio, resp.GetAudio().GetData()...)
	}
	res := st.Result()
	if res.Completed.GetAudioBytes() != uint64(len(audio)) {
		t.Errorf("Completed says %d bytes, received %d", res.Completed.GetAudioBytes(), len(audio))
	}
	sameAudio(t, audio, upstreamTask(t, sc, res.Started))
}

// The default policy retries exactly the codes a refusal before audio has.
func TestServiceConfigRetriesRefusalsOnly(t *testing.T) {
	for _, want := range []string{`"maxAttempts": 3`, `"retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]`,
		`"service": "cosyvoice.sidecar.v1.Synthesizer"`} {
		if !strings.Contains(cosyvoice.ServiceConfig, want) {
			t.Errorf("ServiceConfig lacks %s", want)
		}
	}
	// gRPC-Go validates the config when it dials.
	conn, err := grpc.NewClient("127.0.0.1:1", append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cosyvoice.DialOptions()...)...)
	if err != nil {
		t.Fatalf("ServiceConfig refused by gRPC-Go: %v", err)
	}
	_ = conn.Close()
}
