package cosyvoice_test

import (
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/grpclog"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/internal/sidecartest"
)

// grpcLogs holds gRPC-Go's warnings and errors, e.g. the GOAWAY with
// too_many_pings that the keepalive test must not see.
var grpcLogs lockedBuffer

func TestMain(m *testing.M) {
	// gRPC-Go's logger must be replaced before any gRPC call.
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, &grpcLogs, &grpcLogs))
	os.Exit(sidecartest.Main(m))
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
