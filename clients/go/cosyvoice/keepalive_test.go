package cosyvoice_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/internal/sidecartest"
)

// keepaliveIdle is how long the channel stays idle: the 2 minutes that issue
// #6 asks for, long enough for the server's ping policy to strike.
const keepaliveIdle = 2 * time.Minute

// A channel with gRPC-Go's default settings (no keepalive options; BDP pings
// after received data) survives 2 idle minutes: the sidecar does not send a
// GOAWAY with too_many_pings, nor drop the connection at all.
func TestIdleChannelWithDefaultKeepaliveSurvives(t *testing.T) {
	if os.Getenv("CI") == "" && os.Getenv("COSYVOICE_LONG_TESTS") != "1" {
		t.Skipf("takes %v; set COSYVOICE_LONG_TESTS=1 to run it (it always runs when CI is set)", keepaliveIdle)
	}
	sc := sidecartest.Get(t)
	conn, err := grpc.NewClient(sc.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := cosyvoice.New(conn)

	// Traffic first: received data makes gRPC-Go send BDP pings, which a
	// strict server counts as strikes.
	for i := range 3 {
		if _, _, err := client.Synthesize(timeout(t, 30*time.Second), "Warming the channel up.", nil); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if s := conn.GetState(); s != connectivity.Ready {
		t.Fatalf("channel %v after the calls, want READY", s)
	}

	logsBefore := len(grpcLogs.String())
	watch, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	changed := make(chan connectivity.State, 1)
	go func() {
		if conn.WaitForStateChange(watch, connectivity.Ready) {
			changed <- conn.GetState()
		}
	}()
	select {
	case s := <-changed:
		t.Fatalf("the idle channel left READY for %v; gRPC-Go logs:\n%s", s, grpcLogs.String())
	case <-time.After(keepaliveIdle):
	}
	stopWatch()

	if logs := grpcLogs.String()[logsBefore:]; strings.Contains(logs, "too_many_pings") || strings.Contains(logs, "GoAway") {
		t.Fatalf("the server sent a GOAWAY:\n%s", logs)
	}
	if _, _, err := client.Synthesize(timeout(t, 30*time.Second), "Still here after the idle minutes.", nil); err != nil {
		t.Fatalf("call after %v idle: %v", keepaliveIdle, err)
	}
	if s := conn.GetState(); s != connectivity.Ready {
		t.Fatalf("channel %v after the idle period, want READY", s)
	}
}
