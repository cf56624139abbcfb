package dev.cosyvoice.sidecar.client;

import dev.cosyvoice.sidecar.v1.Completed;
import dev.cosyvoice.sidecar.v1.SentenceTiming;
import dev.cosyvoice.sidecar.v1.Started;
import dev.cosyvoice.sidecar.v1.SynthesisConfig;
import dev.cosyvoice.sidecar.v1.SynthesizeRequest;
import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import dev.cosyvoice.sidecar.v1.SynthesizerGrpc;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.TimeUnit;
import java.util.function.UnaryOperator;

/**
 * A client of the cosyvoice-sidecar {@code Synthesizer} service.
 *
 * <pre>{@code
 * try (SynthesizerClient client = SynthesizerClient.forTarget("127.0.0.1:50051")) {
 *   SynthesisResult result = client.synthesizeAll("Hello!", SynthesisConfig.getDefaultInstance());
 *   Files.write(Path.of("hello.wav"), result.toWav());
 * }
 * }</pre>
 *
 * <p>Blocking: {@link #synthesize} iterates over the responses of one {@code Synthesize} call,
 * {@link #synthesizeAll} collects them. Async: {@link #streamingSynthesize} opens a bidirectional
 * {@code StreamingSynthesize} call to send text fragments into while audio arrives.
 *
 * <p>Every failure is an {@link StatusRuntimeException} with the sidecar's status code and message
 * unchanged: {@code INVALID_ARGUMENT} names the bad field, {@code RESOURCE_EXHAUSTED} means the
 * pool or the upstream quota is full, {@code UNAVAILABLE} that the upstream cannot be reached.
 * Channels built by {@link #forTarget} retry calls refused before any audio (see {@link
 * #defaultServiceConfig()}).
 *
 * <p>Instances are immutable and thread-safe; share one per process. {@link #close()} shuts down
 * the channel only if this client created it ({@link #forTarget}); a channel passed to {@link
 * #SynthesizerClient(Channel)} stays the caller's to shut down.
 */
public final class SynthesizerClient implements AutoCloseable {
  private static final long CLOSE_GRACE_SECONDS = 5;

  /**
   * The HTTP/2 flow-control window, in bytes per call, of the channels {@link #forTarget} builds:
   * about 6 s of 22050 Hz pcm. Fixing it turns off grpc-java's automatic (bandwidth-delay-product)
   * window tuning, which buys nothing next to the sidecar (loopback, a Unix socket, the pod
   * network) and costs a PING, which the sidecar must acknowledge, per burst of audio received.
   * Pass it to {@code NettyChannelBuilder.flowControlWindow} when you build the channel yourself.
   */
  public static final int FLOW_CONTROL_WINDOW = 256 * 1024;

  private final Channel channel;
  private final ManagedChannel ownedChannel;
  private final SynthesizerGrpc.SynthesizerBlockingStub blockingStub;
  private final SynthesizerGrpc.SynthesizerStub asyncStub;

  /**
   * Create a client on {@code channel}, e.g. a {@link ManagedChannel} configured with TLS,
   * interceptors or keepalive. The caller keeps ownership: {@link #close()} leaves it open.
   */
  public SynthesizerClient(Channel channel) {
    this(channel, null, SynthesizerGrpc.newBlockingStub(channel), SynthesizerGrpc.newStub(channel));
  }

  private SynthesizerClient(
      Channel channel,
      ManagedChannel ownedChannel,
      SynthesizerGrpc.SynthesizerBlockingStub blockingStub,
      SynthesizerGrpc.SynthesizerStub asyncStub) {
    this.channel = Objects.requireNonNull(channel, "channel");
    this.ownedChannel = ownedChannel;
    this.blockingStub = blockingStub;
    this.asyncStub = asyncStub;
  }

  /**
   * Create a client with its own plaintext channel to {@code target}, e.g. {@code
   * "127.0.0.1:50051"} or {@code "dns:///sidecar:50051"}. The sidecar listens on loopback or a
   * private network, hence no TLS; use {@link #forTarget(String, ChannelCredentials)} otherwise.
   * The channel uses grpc-java's default settings (keepalive off, which the sidecar accepts on idle
   * connections indefinitely) but a fixed {@link #FLOW_CONTROL_WINDOW} and the retry policy of
   * {@link #defaultServiceConfig()}.
   */
  public static SynthesizerClient forTarget(String target) {
    return forTarget(target, InsecureChannelCredentials.create());
  }

  /**
   * Create a client with its own channel to {@code target} using {@code credentials}, with a fixed
   * {@link #FLOW_CONTROL_WINDOW} and the retry policy of {@link #defaultServiceConfig()}.
   */
  public static SynthesizerClient forTarget(String target, ChannelCredentials credentials) {
    return forTarget(target, credentials, UnaryOperator.identity());
  }

  /**
   * Create a client with its own channel to {@code target}, built by a {@link NettyChannelBuilder}
   * that {@code customize} may change after this class's settings, e.g. {@code b ->
   * b.disableRetry()} to turn retries off, or {@code b -> b.keepAliveTime(30, SECONDS)}. The
   * client owns the channel, as with {@link #forTarget(String)}.
   */
  public static SynthesizerClient forTarget(
      String target,
      ChannelCredentials credentials,
      UnaryOperator<NettyChannelBuilder> customize) {
    NettyChannelBuilder builder = NettyChannelBuilder.forTarget(target, credentials)
        .flowControlWindow(FLOW_CONTROL_WINDOW)
        .defaultServiceConfig(defaultServiceConfig())
        .enableRetry();
    ManagedChannel channel = customize.apply(builder).build();
    return new SynthesizerClient(
        channel, channel, SynthesizerGrpc.newBlockingStub(channel), SynthesizerGrpc.newStub(channel));
  }

  /**
   * Return the default service config of the channels {@link #forTarget} builds: a retry policy,
   * for {@code ManagedChannelBuilder.defaultServiceConfig} (with {@code enableRetry()}) on a
   * channel you build yourself.
   *
   * <p>gRPC retries a call by itself only while the call is uncommitted (gRFC A6). The sidecar
   * sends no response headers before its first response, so a call it refuses before any audio
   * can be sent again: {@code RESOURCE_EXHAUSTED} (every upstream connection busy, too many
   * calls, DashScope throttling) and {@code UNAVAILABLE} (draining, upstream unreachable), at most
   * 3 attempts. A call that fails after audio has flowed is never retried, so no audio is played
   * twice. The sidecar's {@code grpc-retry-pushback-ms} trailer says how long to wait, in place of
   * the backoff; retry throttling stops retrying while more than about one call in ten fails. The
   * Go and Python clients carry the same policy.
   */
  public static Map<String, ?> defaultServiceConfig() {
    // grpc-java reads JSON numbers as Double.
    Map<String, Object> retryPolicy = Map.of(
        "maxAttempts", 3.0,
        "initialBackoff", "0.1s",
        "maxBackoff", "1s",
        "backoffMultiplier", 2.0,
        "retryableStatusCodes", List.of("UNAVAILABLE", "RESOURCE_EXHAUSTED"));
    Map<String, Object> methodConfig = Map.of(
        "name", List.of(Map.of("service", SynthesizerGrpc.SERVICE_NAME)),
        "retryPolicy", retryPolicy);
    return Map.of(
        "methodConfig", List.of(methodConfig),
        "retryThrottling", Map.of("maxTokens", 10.0, "tokenRatio", 0.1));
  }

  /**
   * Return a client whose calls have a deadline {@code duration} from now; a call still running
   * then fails with {@code DEADLINE_EXCEEDED} and its upstream task is cancelled. Like a gRPC stub's
   * {@code withDeadlineAfter}, the deadline is fixed now, not when a call starts. The returned
   * client shares this client's channel and never closes it.
   */
  public SynthesizerClient withDeadlineAfter(long duration, TimeUnit unit) {
    return withDeadline(Deadline.after(duration, unit));
  }

  /** Return a client whose calls have {@code deadline}; see {@link #withDeadlineAfter}. */
  public SynthesizerClient withDeadline(Deadline deadline) {
    return new SynthesizerClient(
        channel, null, blockingStub.withDeadline(deadline), asyncStub.withDeadline(deadline));
  }

  /**
   * Start a {@code Synthesize} call and return its responses as a blocking iterator. Close it (try
   * with resources) to cancel the call if you stop reading early.
   *
   * @param text the text to speak, 1 to 200,000 characters
   * @param config the synthesis settings; null or empty means the server's defaults
   * @throws StatusRuntimeException from the iterator's methods when the call fails
   */
  public ResponseStream synthesize(String text, SynthesisConfig config) {
    SynthesizeRequest.Builder request = SynthesizeRequest.newBuilder().setText(text);
    if (config != null) {
      request.setConfig(config);
    }
    // The call belongs to this context, so cancelling the context (ResponseStream.close) cancels it.
    Context.CancellableContext context = Context.current().withCancellation();
    Context previous = context.attach();
    try {
      return new ResponseStream(blockingStub.synthesize(request.build()), context);
    } finally {
      context.detach(previous);
    }
  }

  /**
   * Synthesize {@code text} and return the whole audio once the call completed.
   *
   * @param text the text to speak, 1 to 200,000 characters
   * @param config the synthesis settings; null or empty means the server's defaults
   * @throws StatusRuntimeException when the call fails, e.g. {@code INVALID_ARGUMENT} for a bad
   *     config or {@code DEADLINE_EXCEEDED}
   */
  public SynthesisResult synthesizeAll(String text, SynthesisConfig config) {
    Started started = null;
    Completed completed = null;
    ByteArrayOutputStream audio = new ByteArrayOutputStream();
    List<SentenceTiming> sentences = new ArrayList<>();
    try (ResponseStream responses = synthesize(text, config)) {
      while (responses.hasNext()) {
        SynthesizeResponse response = responses.next();
        switch (response.getResponseCase()) {
          case STARTED -> started = response.getStarted();
          case AUDIO -> audio.writeBytes(response.getAudio().getData().toByteArray());
          case SENTENCE -> sentences.add(response.getSentence());
          case COMPLETED -> completed = response.getCompleted();
          default -> {
            // `flushed` only answers StreamingSynthesize; ResponseStream checked the rest.
          }
        }
      }
    }
    return new SynthesisResult(started, audio.toByteArray(), sentences, completed);
  }

  /**
   * Start a {@code StreamingSynthesize} call: send text into the returned session while responses
   * arrive at {@code responses}, in order, on a gRPC thread. A failure arrives at {@code
   * responses.onError} as a {@link StatusRuntimeException}; a response order that breaks
   * synthesizer.proto ends the call with {@code INTERNAL}.
   *
   * @param config the synthesis settings, sent as the first message; null or empty means the
   *     server's defaults
   */
  public StreamingSession streamingSynthesize(
      SynthesisConfig config, StreamObserver<SynthesizeResponse> responses) {
    Objects.requireNonNull(responses, "responses");
    SynthesisConfig settings = config == null ? SynthesisConfig.getDefaultInstance() : config;
    return StreamingSession.start(asyncStub::streamingSynthesize, settings, responses);
  }

  /**
   * Start a {@code StreamingSynthesize} call with typed callbacks; see {@link SynthesisListener}
   * and {@link #streamingSynthesize(SynthesisConfig, StreamObserver)}.
   */
  public StreamingSession streamingSynthesize(SynthesisConfig config, SynthesisListener listener) {
    return streamingSynthesize(config, new ListenerObserver(listener));
  }

  /**
   * Shut down the channel if this client created it, waiting up to 5 seconds for running calls
   * before cancelling them. Does nothing for a channel the caller passed in.
   */
  @Override
  public void close() {
    if (ownedChannel == null) {
      return;
    }
    ownedChannel.shutdown();
    try {
      if (!ownedChannel.awaitTermination(CLOSE_GRACE_SECONDS, TimeUnit.SECONDS)) {
        ownedChannel.shutdownNow();
      }
    } catch (InterruptedException e) {
      ownedChannel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** The channel calls go through; for tests in this package. */
  Channel channel() {
    return channel;
  }

  @Override
  public String toString() {
    return "SynthesizerClient{channel=" + channel + ", owned=" + (ownedChannel != null) + "}";
  }

  /** Adapts the response stream to a {@link SynthesisListener}: one terminal callback, last. */
  private static final class ListenerObserver implements StreamObserver<SynthesizeResponse> {
    private final SynthesisListener listener;
    private Completed completed;

    ListenerObserver(SynthesisListener listener) {
      this.listener = Objects.requireNonNull(listener, "listener");
    }

    @Override
    public void onNext(SynthesizeResponse response) {
      switch (response.getResponseCase()) {
        case STARTED -> listener.onStarted(response.getStarted());
        case AUDIO -> listener.onAudio(response.getAudio());
        case SENTENCE -> listener.onSentence(response.getSentence());
        case FLUSHED -> listener.onFlushed(response.getFlushed());
        // Held back until the status arrives, so that onCompleted really is the last callback.
        case COMPLETED -> completed = response.getCompleted();
        case RESPONSE_NOT_SET -> {
          // StreamingSession rejects empty responses before they get here.
        }
      }
    }

    @Override
    public void onError(Throwable t) {
      listener.onError(Errors.toStatusRuntimeException(t));
    }

    @Override
    public void onCompleted() {
      listener.onCompleted(completed);
    }
  }
}
