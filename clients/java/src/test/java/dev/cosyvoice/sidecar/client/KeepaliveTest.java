package dev.cosyvoice.sidecar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.ConnectivityState;
import io.grpc.ManagedChannel;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * An idle channel with grpc-java's default keepalive settings stays connected to the sidecar: no
 * GOAWAY {@code too_many_pings}, no reconnect. Takes two minutes, so it runs only with {@code
 * COSYVOICE_LONG_TESTS=1}, and always when {@code CI} is set.
 */
class KeepaliveTest {
  private static final Duration IDLE = Duration.ofMinutes(2);

  private static String skipReason;
  private static Sidecar sidecar;

  @BeforeAll
  static void startSidecar() throws Exception {
    skipReason = Sidecar.unavailable();
    if (skipReason == null && !Sidecar.inCi() && !"1".equals(System.getenv("COSYVOICE_LONG_TESTS"))) {
      skipReason = "the 2-minute keepalive test runs with COSYVOICE_LONG_TESTS=1 (always in CI)";
    }
    if (skipReason == null) {
      sidecar = Sidecar.start("keepalive-test");
    }
  }

  /** Skip each test (so that each counts as skipped) when it is not to run here. */
  @BeforeEach
  void requireSidecar() {
    Assumptions.assumeTrue(skipReason == null, skipReason);
  }

  @AfterAll
  static void stopSidecar() throws Exception {
    if (sidecar != null) {
      assertEquals(0, sidecar.stop(), "the sidecar's exit status after SIGTERM");
    }
  }

  @Test
  void idleChannelWithDefaultKeepaliveIsNotDisconnected() throws Exception {
    GrpcLogRecorder log = new GrpcLogRecorder();
    Logger grpcLogger = Logger.getLogger("io.grpc");
    grpcLogger.addHandler(log);
    try (SynthesizerClient client = SynthesizerClient.forTarget(sidecar.target())) {
      ManagedChannel channel = (ManagedChannel) client.channel();
      client.synthesizeAll("Connect.", null);
      assertEquals(ConnectivityState.READY, channel.getState(false), "after the first call");

      List<ConnectivityState> changes = new ArrayList<>();
      watch(channel, ConnectivityState.READY, changes);
      Thread.sleep(IDLE.toMillis());

      synchronized (changes) {
        assertEquals(List.of(), changes, "state changes of the idle channel");
      }
      SynthesisResult result = client.synthesizeAll("Still here.", null);
      assertTrue(result.audio().length > 0, "no audio after the idle period");
    } finally {
      grpcLogger.removeHandler(log);
    }
    assertEquals(List.of(), log.goaways(), "GOAWAY warnings logged by grpc-java");
  }

  /** Record every connectivity change of {@code channel} from {@code current} on. */
  private static void watch(
      ManagedChannel channel, ConnectivityState current, List<ConnectivityState> changes) {
    channel.notifyWhenStateChanged(current, () -> {
      ConnectivityState now = channel.getState(false);
      synchronized (changes) {
        changes.add(now);
      }
      watch(channel, now, changes);
    });
  }

  /** Keeps grpc-java's log records that mention a GOAWAY or too_many_pings. */
  private static final class GrpcLogRecorder extends Handler {
    private final List<String> goaways = new ArrayList<>();

    @Override
    public synchronized void publish(LogRecord record) {
      String text = record.getMessage() + " " + Arrays.toString(record.getParameters());
      if (record.getLevel().intValue() >= Level.WARNING.intValue()
          && (text.contains("GOAWAY") || text.contains("too_many_pings"))) {
        goaways.add(text);
      }
    }

    synchronized List<String> goaways() {
      return List.copyOf(goaways);
    }

    @Override
    public void flush() {}

    @Override
    public void close() {}
  }
}
