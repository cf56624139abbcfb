package dev.cosyvoice.sidecar.client;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Forwards TCP connections to the sidecar and counts the PING frames (not acknowledgements) the
 * client sends: after the 24-byte preface, HTTP/2 frames of a 9-byte header and a payload.
 */
final class PingCountingProxy implements AutoCloseable {
  private static final int PING = 0x6;
  private static final int ACK = 0x1;

  private final ServerSocket listener;
  private final String sidecarTarget;
  private final AtomicLong pings = new AtomicLong();

  PingCountingProxy(String sidecarTarget) throws IOException {
    this.sidecarTarget = sidecarTarget;
    this.listener = new ServerSocket(0, 8, InetAddress.getLoopbackAddress());
    daemon(this::acceptLoop, "ping-proxy-accept");
  }

  String target() {
    return "127.0.0.1:" + listener.getLocalPort();
  }

  long pings() {
    return pings.get();
  }

  private void acceptLoop() {
    while (!listener.isClosed()) {
      try {
        Socket client = listener.accept();
        int colon = sidecarTarget.lastIndexOf(':');
        Socket server = new Socket(
            sidecarTarget.substring(0, colon),
            Integer.parseInt(sidecarTarget.substring(colon + 1)));
        daemon(() -> copy(server, client), "ping-proxy-down");
        daemon(() -> countPings(client, server), "ping-proxy-up");
      } catch (IOException e) {
        return;
      }
    }
  }

  private void countPings(Socket client, Socket server) {
    try (client;
        server;
        DataInputStream in = new DataInputStream(client.getInputStream())) {
      OutputStream out = server.getOutputStream();
      byte[] preface = new byte[24];
      in.readFully(preface);
      out.write(preface);
      byte[] header = new byte[9];
      while (true) {
        in.readFully(header);
        int length = (header[0] & 0xff) << 16 | (header[1] & 0xff) << 8 | (header[2] & 0xff);
        byte[] payload = new byte[length];
        in.readFully(payload);
        if ((header[3] & 0xff) == PING && (header[4] & ACK) == 0) {
          pings.incrementAndGet();
        }
        out.write(header);
        out.write(payload);
      }
    } catch (IOException e) {
      // The connection ended.
    }
  }

  private static void copy(Socket from, Socket to) {
    try (InputStream in = from.getInputStream()) {
      in.transferTo(to.getOutputStream());
    } catch (IOException e) {
      // The connection ended.
    } finally {
      try {
        to.close();
      } catch (IOException ignored) {
        // Already closed.
      }
    }
  }

  private static void daemon(Runnable body, String name) {
    Thread thread = new Thread(body, name);
    thread.setDaemon(true);
    thread.start();
  }

  @Override
  public void close() throws IOException {
    listener.close();
  }
}
