package cosyvoice_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/internal/sidecartest"
)

// pingProxy forwards TCP connections to the sidecar and counts the PING
// frames (not their acknowledgements) that clients send on them.
type pingProxy struct {
	ln     net.Listener
	target string
	pings  atomic.Int64
}

func startPingProxy(t *testing.T, target string) *pingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pingProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { _ = ln.Close() })
	return p
}

func (p *pingProxy) addr() string { return p.ln.Addr().String() }

func (p *pingProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.relay(client)
	}
}

// relay copies the sidecar's bytes back as they are and reads the client's
// as HTTP/2: the 24-byte preface, then frames of a 9-byte header (length,
// type, flags, stream) and a payload.
func (p *pingProxy) relay(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		_, _ = io.Copy(client, server)
		_ = client.Close()
	}()
	r := bufio.NewReader(client)
	preface := make([]byte, 24)
	if _, err := io.ReadFull(r, preface); err != nil {
		return
	}
	if _, err := server.Write(preface); err != nil {
		return
	}
	header := make([]byte, 9)
	for {
		if _, err := io.ReadFull(r, header); err != nil {
			return
		}
		payload := make([]byte, int(header[0])<<16|int(header[1])<<8|int(header[2]))
		if _, err := io.ReadFull(r, payload); err != nil {
			return
		}
		const ping, ack = 0x6, 0x1
		if header[3] == ping && header[4]&ack == 0 {
			p.pings.Add(1)
		}
		if _, err := server.Write(append(header, payload...)); err != nil {
			return
		}
	}
}

// pingsDuringSynthesis speaks a few sentences through client and returns the
// PINGs its connection sent meanwhile.
func pingsDuringSynthesis(t *testing.T, client *cosyvoice.Client, proxy *pingProxy) int64 {
	t.Helper()
	text := strings.Repeat("Audio arrives in many chunks for a text of several sentences. ", 4)
	audio, _, err := client.Synthesize(timeout(t, 30*time.Second), text, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(audio) == 0 {
		t.Fatal("no audio")
	}
	return proxy.pings.Load()
}

func TestNewClientSendsNoPingsAsAudioArrives(t *testing.T) {
	sc := sidecartest.Get(t)

	// The control: gRPC-Go's defaults probe the bandwidth-delay product with
	// a PING as data arrives, and the proxy sees them.
	probing := startPingProxy(t, sc.Addr)
	conn, err := grpc.NewClient(probing.addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if n := pingsDuringSynthesis(t, cosyvoice.New(conn), probing); n == 0 {
		t.Fatal("control: gRPC-Go's default options sent no PING; the proxy cannot tell")
	}

	fixed := startPingProxy(t, sc.Addr)
	client, err := cosyvoice.NewClient(fixed.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	if n := pingsDuringSynthesis(t, client, fixed); n != 0 {
		t.Fatalf("NewClient's connection sent %d PINGs; DialOptions should fix the windows", n)
	}
}
