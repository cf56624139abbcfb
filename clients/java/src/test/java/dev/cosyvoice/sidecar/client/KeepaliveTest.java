package dev.cosyvoice.sidecar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.ConnectivityState;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;
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
 * An idle channel with grpc-java's default keepalive settings, and one that pings every 10 s
 * without calls, stay connected to the sidecar: no GOAWAY {@code too_many_pings}, no reconnect. Takes two minutes, so it runs only with {@code
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
  void idleChannelsAreNotDisconnected() throws Exception {
    GrpcLogRecorder log = new GrpcLogRecorder();
    Logger grpcLogger = Logger.getLogger("io.grpc");
    grpcLogger.addHandler(log);
    // forTarget's channel (grpc-java's keepalive defaults), and grpc-java's most eager keepalive:
    // a ping every 10 s (its minimum) even without calls, which the sidecar must also accept.
    ManagedChannel eager = Grpc.newChannelBuilder(sidecar.target(), InsecureChannelCredentials.create())
        .keepAliveTime(10, TimeUnit.SECONDS)
        .keepAliveWithoutCalls(true)
        .build();
    try (SynthesizerClient byDefault = SynthesizerClient.forTarget(sidecar.target());
        SynthesizerClient eagerClient = new SynthesizerClient(eager)) {
      List<ConnectivityState> defaultChanges = connectAndWatch(byDefault);
      List<ConnectivityState> eagerChanges = connectAndWatch(eagerClient);
      Thread.sleep(IDLE.toMillis());

      synchronized (defaultChanges) {
        assertEquals(List.of(), defaultChanges, "state changes of the idle default channel");
      }
      synchronized (eagerChanges) {
        assertEquals(List.of(), eagerChanges, "state changes of the idle 10 s keepalive channel");
      }
      assertTrue(byDefault.synthesizeAll("Still here.", null).audio().length > 0);
      assertTrue(eagerClient.synthesizeAll("Still here.", null).audio().length > 0);
    } finally {
      eager.shutdownNow();
      grpcLogger.removeHandler(log);
    }
    assertEquals(List.of(), log.goaways(), "GOAWAY warnings logged by grpc-java");
  }

  /** Make a first call on {@code client}'s channel, then record its connectivity changes. */
  private static List<ConnectivityState> connectAndWatch(SynthesizerClient client) {
    ManagedChannel channel = (ManagedChannel) client.channel();
    client.synthesizeAll("Connect.", null);
    assertEquals(ConnectivityState.READY, channel.getState(false), "after the first call");
    List<ConnectivityState> changes = new ArrayList<>();
    watch(channel, ConnectivityState.READY, changes);
    return changes;
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
