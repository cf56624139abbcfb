package dev.cosyvoice.sidecar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.cosyvoice.sidecar.v1.GetStatusRequest;
import dev.cosyvoice.sidecar.v1.SidecarStatusGrpc;
import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import io.grpc.ClientInterceptors;
import io.grpc.InsecureChannelCredentials;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.time.Duration;
import java.time.Instant;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The default retry policy against a sidecar with one upstream connection: a call refused
 * RESOURCE_EXHAUSTED while another holds it is retried after the sidecar's pushback; a call that
 * fails after audio is never retried.
 */
class RetryTest {
  private static final Metadata.Key<String> PUSHBACK =
      Metadata.Key.of("grpc-retry-pushback-ms", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> REQUEST_ID =
      Metadata.Key.of("x-request-id", Metadata.ASCII_STRING_MARSHALLER);

  private static String skipReason;
  private static Sidecar sidecar;
  private static SynthesizerClient client;

  @BeforeAll
  static void startSidecar() throws Exception {
    skipReason = Sidecar.unavailable();
    if (skipReason == null) {
      String wait = String.format("%.3f", Timing.scaled(0.5).toMillis() / 1000.0);
      sidecar = Sidecar.start("retry-test",
          "--pool-min-idle", "1", "--pool-max-size", "1", "--acquire-timeout", wait);
      client = SynthesizerClient.forTarget(sidecar.target());
    }
  }

  @BeforeEach
  void requireSidecar() {
    Assumptions.assumeTrue(skipReason == null, skipReason);
  }

  @AfterAll
  static void stopSidecar() throws Exception {
    if (client != null) {
      client.close();
    }
    if (sidecar != null) {
      assertEquals(0, sidecar.stop(), "the sidecar's exit status after SIGTERM");
    }
  }

  /** Opens a stream that holds the pool's only connection until it is finished. */
  private static StreamingSession holdTheOnlyConnection(CollectingObserver holder) throws Exception {
    StreamingSession session = client.streamingSynthesize(null, holder);
    session.sendText("Holding the only connection.");
    holder.awaitNext(SynthesizeResponse.ResponseCase.STARTED, Timing.scaled(20));
    return session;
  }

  /** Waits until a call has waited for the connection and given up; returns when it saw that. */
  private static Instant awaitRefusedOnce() throws InterruptedException {
    var status = SidecarStatusGrpc.newBlockingStub(client.channel());
    for (int waiters : new int[] {1, 0}) {
      Instant deadline = Instant.now().plus(Timing.scaled(20));
      while (status.getStatus(GetStatusRequest.getDefaultInstance()).getPool().getWaiters()
          != waiters) {
        assertTrue(Instant.now().isBefore(deadline), "the pool never had " + waiters + " waiters");
        Thread.sleep(5);
      }
    }
    return Instant.now();
  }

  @Test
  void refusedCallIsRetriedAfterThePushbackAndSucceeds() throws Exception {
    CollectingObserver holder = new CollectingObserver();
    StreamingSession session = holdTheOnlyConnection(holder);
    CompletableFuture<SynthesisResult> second =
        CompletableFuture.supplyAsync(() -> client.synthesizeAll("Second in line.", null));
    Instant refusedAt = awaitRefusedOnce();
    session.finish();
    assertEquals(Status.Code.OK, holder.awaitEnd(Timing.scaled(20)).getCode());

    SynthesisResult result = second.get(Timing.scaled(30).toMillis(), TimeUnit.MILLISECONDS);
    Duration waited = Duration.between(refusedAt, Instant.now());
    assertTrue(waited.toMillis() >= 900,
        "retried " + waited + " after the refusal, before the sidecar's 1 s pushback");
    Responses.assertUpstreamAudio(sidecar, result.started(), result.audio());
  }

  @Test
  void withRetriesOffTheRefusalCarriesThePushbackAndTheRequestId() throws Exception {
    try (SynthesizerClient noRetry = SynthesizerClient.forTarget(
        sidecar.target(), InsecureChannelCredentials.create(), b -> b.disableRetry())) {
      CollectingObserver holder = new CollectingObserver();
      StreamingSession session = holdTheOnlyConnection(holder);
      Metadata headers = new Metadata();
      headers.put(REQUEST_ID, "java-refused-1");
      SynthesizerClient tagged = new SynthesizerClient(ClientInterceptors.intercept(
          noRetry.channel(), MetadataUtils.newAttachHeadersInterceptor(headers)));
      StatusRuntimeException error = assertThrows(
          StatusRuntimeException.class, () -> tagged.synthesizeAll("Refused.", null));
      session.finish();
      holder.awaitEnd(Timing.scaled(20));

      assertEquals(Status.Code.RESOURCE_EXHAUSTED, error.getStatus().getCode(), error.toString());
      Metadata trailers = error.getTrailers();
      assertEquals("1000", trailers.get(PUSHBACK), "trailer grpc-retry-pushback-ms");
      assertEquals("java-refused-1", trailers.get(REQUEST_ID), "trailer x-request-id");
    }
  }

  @Test
  void callFailingAfterAudioIsNotRetried() throws Exception {
    int before = taskCount();
    sidecar.knobs(Map.of("fail_mid_every", "1"));
    try {
      RecordingListener listener = new RecordingListener();
      StreamingSession session = client.streamingSynthesize(null, listener);
      session.sendText("This will break after the first audio.");
      session.finish();
      assertTrue(listener.ended.await(20 * (long) Math.ceil(Timing.TIME_SCALE), TimeUnit.SECONDS),
          "no terminal callback");
      assertEquals(List.of("error"), listener.terminals());
      StatusRuntimeException error = listener.error();
      assertEquals(Status.Code.UNAVAILABLE, error.getStatus().getCode(), error.toString());
      assertTrue(listener.firstAudio.getCount() == 0, "the call failed before any audio");
      Metadata trailers = error.getTrailers();
      assertTrue(trailers == null || trailers.get(PUSHBACK) == null,
          "a failure after audio asks for a retry: " + trailers);
    } finally {
      sidecar.knobs(Map.of("fail_mid_every", "0"));
    }
    Thread.sleep(Timing.scaled(1).toMillis()); // ample time for a retry that must not come
    assertEquals(before + 1, taskCount(), "upstream tasks for one call");
  }

  @Test
  void defaultServiceConfigRetriesRefusalsOnly() {
    Map<String, ?> config = SynthesizerClient.defaultServiceConfig();
    var methods = (List<?>) config.get("methodConfig");
    var policy = (Map<?, ?>) ((Map<?, ?>) methods.get(0)).get("retryPolicy");
    assertEquals(3.0, policy.get("maxAttempts"));
    assertEquals(List.of("UNAVAILABLE", "RESOURCE_EXHAUSTED"), policy.get("retryableStatusCodes"));
    assertFalse(config.containsKey("loadBalancingConfig"));
  }

  private static int taskCount() throws Exception {
    return sidecar.stats().getFieldsOrThrow("tasks").getListValue().getValuesCount();
  }
}
