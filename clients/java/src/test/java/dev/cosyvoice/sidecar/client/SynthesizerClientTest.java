package dev.cosyvoice.sidecar.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Struct;
import dev.cosyvoice.sidecar.examples.Quickstart;
import dev.cosyvoice.sidecar.examples.Say;
import dev.cosyvoice.sidecar.v1.AudioFormat;
import dev.cosyvoice.sidecar.v1.Completed;
import dev.cosyvoice.sidecar.v1.Started;
import dev.cosyvoice.sidecar.v1.SynthesisConfig;
import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import dev.cosyvoice.sidecar.v1.SynthesizeResponse.ResponseCase;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The Java client against a live sidecar on the embedded DashScope emulator. */
class SynthesizerClientTest {
  /** Long enough that, at real-time pace, the audio takes far longer than any test waits. */
  private static final String LONG_TEXT =
      "The quick brown fox jumps over the lazy dog, and keeps on running. ".repeat(12);

  private static String skipReason;
  private static Sidecar sidecar;
  private static SynthesizerClient client;

  @BeforeAll
  static void startSidecar() throws Exception {
    skipReason = Sidecar.unavailable();
    if (skipReason == null) {
      sidecar = Sidecar.start("client-test");
      client = SynthesizerClient.forTarget(sidecar.target());
    }
  }

  /** Skip each test (so that each counts as skipped) when there is no sidecar to test against. */
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

  @Test
  void streamingDeliversTheUpstreamAudioInOrder() throws Exception {
    SynthesisConfig config = SynthesisConfig.newBuilder()
        .setFormat(AudioFormat.AUDIO_FORMAT_PCM)
        .setSampleRateHz(16000)
        .setVolume(60)
        .build();
    RecordingListener listener = new RecordingListener();
    StreamingSession session = client.streamingSynthesize(config, listener);
    session.sendText("Hello from the Java client; ");
    session.sendText("this sentence arrives in three fra");
    session.sendText("gments, split inside a word.");
    session.finish();

    Completed completed = session.completion().get(30 * scale(), TimeUnit.SECONDS);
    assertTrue(listener.ended.await(5, TimeUnit.SECONDS), "the listener saw no terminal callback");
    assertEquals(List.of("completed"), listener.terminals(), "terminal callbacks");
    List<SynthesizeResponse> responses = listener.responses();
    byte[] audio = Responses.assertOrderedAudio(responses);
    assertEquals(completed, responses.get(responses.size() - 1).getCompleted());

    Started started = responses.get(0).getStarted();
    assertEquals(AudioFormat.AUDIO_FORMAT_PCM, started.getFormat(), "started.format");
    assertEquals(16000, started.getSampleRateHz(), "started.sample_rate_hz");
    assertTrue(!started.getRequestId().isEmpty(), "started.request_id is empty");
    Struct task = Responses.assertUpstreamAudio(sidecar, started, audio);
    assertEquals("pcm", task.getFieldsOrThrow("format").getStringValue(), "upstream format");
    assertEquals(16000, (int) task.getFieldsOrThrow("sample_rate").getNumberValue(),
        "upstream sample_rate");
    assertEquals((long) task.getFieldsOrThrow("characters").getNumberValue(),
        completed.getBilledCharacters(), "completed.billed_characters vs. upstream characters");

    IllegalStateException late =
        assertThrows(IllegalStateException.class, () -> session.sendText("too late"));
    assertTrue(late.getMessage().contains("finished"), late.getMessage());
  }

  /** Issue 15: a send after finish() fails locally, and the call still completes. */
  @Test
  void sendAfterFinishFailsLocallyAndTheCallCompletes() throws Exception {
    RecordingListener listener = new RecordingListener();
    StreamingSession session = client.streamingSynthesize(null, listener);
    session.sendText("Everything there is to say.");
    session.finish();
    IllegalStateException text =
        assertThrows(IllegalStateException.class, () -> session.sendText("One more thing."));
    assertTrue(text.getMessage().startsWith("sendText() after finish()"), text.getMessage());
    IllegalStateException flush = assertThrows(IllegalStateException.class, session::flush);
    assertTrue(flush.getMessage().startsWith("flush() after finish()"), flush.getMessage());
    assertThrows(IllegalStateException.class, session::finish);

    Completed completed = session.completion().get(30 * scale(), TimeUnit.SECONDS);
    assertTrue(listener.ended.await(5, TimeUnit.SECONDS), "the listener saw no terminal callback");
    assertEquals(List.of("completed"), listener.terminals(), "terminal callbacks");
    List<SynthesizeResponse> responses = listener.responses();
    byte[] audio = Responses.assertOrderedAudio(responses);
    assertEquals(completed.getAudioBytes(), audio.length, "completed.audio_bytes");
    Responses.assertUpstreamAudio(sidecar, responses.get(0).getStarted(), audio);
  }

  @Test
  void flushIsAcknowledgedInOrderWithTheAudio() throws Exception {
    CollectingObserver observer = new CollectingObserver();
    StreamingSession session =
        client.streamingSynthesize(SynthesisConfig.getDefaultInstance(), observer);
    session.sendText("A first part without a full stop");
    session.flush();
    SynthesizeResponse flushed = observer.awaitNext(ResponseCase.FLUSHED, Timing.scaled(20));
    long audioBefore = observer.received.stream().filter(SynthesizeResponse::hasAudio).count();
    assertEquals(audioBefore, flushed.getFlushed().getAudioChunksBefore(),
        "flushed.audio_chunks_before vs. audio chunks received before it");
    // The flush makes the unfinished sentence speak now, while the stream stays open.
    observer.awaitNext(ResponseCase.AUDIO, Timing.scaled(20));

    session.sendText(", and a second part after the flush.");
    session.finish();
    assertEquals(Status.Code.OK, observer.awaitEnd(Timing.scaled(30)).getCode());
    byte[] audio = Responses.assertOrderedAudio(observer.received);
    Responses.assertUpstreamAudio(sidecar, observer.received.get(0).getStarted(), audio);
    assertNotNull(session.completion().getNow(null), "completion() after the end of the call");
  }

  @Test
  void blockingIteratorDeliversTheUpstreamAudioInOrder() throws Exception {
    SynthesisConfig config = SynthesisConfig.newBuilder()
        .setFormat(AudioFormat.AUDIO_FORMAT_WAV)
        .setSampleRateHz(24000)
        .build();
    List<SynthesizeResponse> responses = new ArrayList<>();
    try (ResponseStream stream = client.synthesize("Blocking calls are simple.", config)) {
      stream.forEachRemaining(responses::add);
    }
    byte[] audio = Responses.assertOrderedAudio(responses);
    Started started = responses.get(0).getStarted();
    assertEquals(AudioFormat.AUDIO_FORMAT_WAV, started.getFormat(), "started.format");
    Responses.assertUpstreamAudio(sidecar, started, audio);
    assertEquals("RIFF", new String(audio, 0, 4, StandardCharsets.US_ASCII), "wav audio header");
  }

  @Test
  void synthesizeAllReturnsTheUpstreamAudio() throws Exception {
    SynthesisResult result = client.synthesizeAll("Everything at once.", null);
    Responses.assertUpstreamAudio(sidecar, result.started(), result.audio());
    assertEquals(result.audio().length, result.completed().getAudioBytes());
    assertEquals(AudioFormat.AUDIO_FORMAT_PCM, result.started().getFormat(), "server default");
    byte[] wav = result.toWav();
    assertWav(wav, result.started().getSampleRateHz(), result.audio());
  }

  @Test
  void cancellingTheStreamCancelsTheUpstreamTask() throws Exception {
    try (RealTimePace pace = new RealTimePace()) {
      RecordingListener listener = new RecordingListener();
      StreamingSession session =
          client.streamingSynthesize(SynthesisConfig.getDefaultInstance(), listener);
      session.sendText(LONG_TEXT);
      session.finish();
      assertTrue(listener.firstAudio.await(20 * scale(), TimeUnit.SECONDS), "no audio arrived");
      session.cancel("the test is done listening");

      assertTrue(listener.ended.await(10 * scale(), TimeUnit.SECONDS), "no terminal callback");
      assertEquals(List.of("error"), listener.terminals(), "terminal callbacks");
      assertEquals(Status.Code.CANCELLED, listener.error().getStatus().getCode());
      ExecutionException failed = assertThrows(ExecutionException.class,
          () -> session.completion().get(5, TimeUnit.SECONDS));
      assertTrue(failed.getCause() instanceof StatusRuntimeException, failed.toString());

      Started started = listener.responses().get(0).getStarted();
      sidecar.awaitTaskOutcome(started.getTaskId(), Timing.scaled(10), "cancelled", "abandoned");
      session.cancel("twice is harmless");
    }
  }

  @Test
  void closingTheBlockingIteratorCancelsTheUpstreamTask() throws Exception {
    try (RealTimePace pace = new RealTimePace()) {
      Started started;
      try (ResponseStream stream = client.synthesize(LONG_TEXT, null)) {
        started = stream.next().getStarted();
        SynthesizeResponse next = stream.next();
        while (!next.hasAudio()) {
          next = stream.next();
        }
      }
      sidecar.awaitTaskOutcome(started.getTaskId(), Timing.scaled(10), "cancelled", "abandoned");
    }
  }

  @Test
  void invalidArgumentSurfacesWithTheFieldNamed() throws Exception {
    SynthesisConfig loud = SynthesisConfig.newBuilder().setVolume(101).build();

    StatusRuntimeException blocking =
        assertThrows(StatusRuntimeException.class, () -> client.synthesizeAll("Too loud.", loud));
    assertEquals(Status.Code.INVALID_ARGUMENT, blocking.getStatus().getCode());
    assertTrue(blocking.getMessage().contains("config.volume"), blocking.getMessage());

    RecordingListener listener = new RecordingListener();
    StreamingSession session = client.streamingSynthesize(loud, listener);
    assertTrue(listener.ended.await(10 * scale(), TimeUnit.SECONDS), "no terminal callback");
    assertEquals(List.of("error"), listener.terminals(), "terminal callbacks");
    StatusRuntimeException streaming = listener.error();
    assertEquals(Status.Code.INVALID_ARGUMENT, streaming.getStatus().getCode());
    assertTrue(streaming.getMessage().contains("config.volume"), streaming.getMessage());
    assertEquals(blocking.getMessage(), streaming.getMessage(), "same message on both RPCs");
    assertThrows(IllegalStateException.class, () -> session.sendText("after the error"));
  }

  @Test
  void upstreamTaskFailureKeepsTheDashScopeErrorCode() {
    SynthesisConfig rejected = SynthesisConfig.newBuilder().setVoice("bad-voice").build();
    StatusRuntimeException error =
        assertThrows(StatusRuntimeException.class, () -> client.synthesizeAll("Hi.", rejected));
    assertTrue(error.getMessage().contains("InvalidParameter"), error.getMessage());
  }

  @Test
  void deadlineExceededCancelsTheUpstreamTask() throws Exception {
    try (RealTimePace pace = new RealTimePace()) {
      SynthesizerClient hurried =
          client.withDeadlineAfter(Timing.scaled(2).toMillis(), TimeUnit.MILLISECONDS);
      Started started;
      try (ResponseStream stream = hurried.synthesize(LONG_TEXT, null)) {
        started = stream.next().getStarted();
        StatusRuntimeException error = assertThrows(StatusRuntimeException.class, () -> {
          while (stream.hasNext()) {
            stream.next();
          }
        });
        assertEquals(Status.Code.DEADLINE_EXCEEDED, error.getStatus().getCode(), error.toString());
      }
      sidecar.awaitTaskOutcome(started.getTaskId(), Timing.scaled(10), "cancelled", "abandoned");
    }
  }

  @Test
  void sayWritesAPlayableWavFile(@TempDir Path dir) throws Exception {
    Path out = dir.resolve("hello.wav");
    ByteArrayOutputStream stdout = new ByteArrayOutputStream();
    ByteArrayOutputStream stderr = new ByteArrayOutputStream();
    int status = Say.run(
        new String[] {"--target", sidecar.target(), "--out", out.toString(),
            "--format", "pcm", "--sample-rate", "24000", "Hello", "from", "Say."},
        new PrintStream(stdout, true, StandardCharsets.UTF_8),
        new PrintStream(stderr, true, StandardCharsets.UTF_8));
    assertEquals(0, status, stderr.toString(StandardCharsets.UTF_8));

    Matcher task = Pattern.compile("task (\\S+)").matcher(stdout.toString(StandardCharsets.UTF_8));
    assertTrue(task.find(), "Say printed no task id: " + stdout);
    byte[] wav = Files.readAllBytes(out);
    byte[] pcm = Arrays.copyOfRange(wav, Wav.HEADER_BYTES, wav.length);
    assertWav(wav, 24000, pcm);
    Started started = Started.newBuilder().setTaskId(task.group(1)).build();
    Responses.assertUpstreamAudio(sidecar, started, pcm);
  }

  @Test
  void quickstartStreamsIntoAWavFile(@TempDir Path dir) throws Exception {
    Path out = dir.resolve("quickstart.wav");
    Completed completed = Quickstart.run(sidecar.target(), out);
    byte[] wav = Files.readAllBytes(out);
    byte[] pcm = Arrays.copyOfRange(wav, Wav.HEADER_BYTES, wav.length);
    assertWav(wav, 24000, pcm);
    assertEquals(completed.getAudioBytes(), pcm.length, "completed.audio_bytes vs. the file");
    // The emulator's last finished task is the one Quickstart ran: this class runs one test at a
    // time and Quickstart does not expose its task id.
    Struct last = lastTask();
    assertEquals("finished", last.getFieldsOrThrow("outcome").getStringValue());
    assertEquals(Responses.sha256(pcm), last.getFieldsOrThrow("audio_sha256").getStringValue(),
        "audio sha256: the file vs. the emulator's audio_sha256");
  }

  private static Struct lastTask() throws Exception {
    var tasks = sidecar.stats().getFieldsOrThrow("tasks").getListValue().getValuesList();
    assertTrue(!tasks.isEmpty(), "the emulator saw no task");
    return tasks.get(tasks.size() - 1).getStructValue();
  }

  /** Assert that {@code wav} is a 16-bit mono WAV file at {@code sampleRate} holding {@code pcm}. */
  private static void assertWav(byte[] wav, int sampleRate, byte[] pcm) {
    ByteBuffer header = ByteBuffer.wrap(wav, 0, Wav.HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    assertEquals("RIFF", new String(wav, 0, 4, StandardCharsets.US_ASCII));
    assertEquals(wav.length - 8, header.getInt(4), "RIFF size");
    assertEquals("WAVEfmt ", new String(wav, 8, 8, StandardCharsets.US_ASCII));
    assertEquals(1, header.getShort(20), "PCM format tag");
    assertEquals(1, header.getShort(22), "channels");
    assertEquals(sampleRate, header.getInt(24), "sample rate");
    assertEquals(sampleRate * 2, header.getInt(28), "byte rate");
    assertEquals(16, header.getShort(34), "bits per sample");
    assertEquals("data", new String(wav, 36, 4, StandardCharsets.US_ASCII));
    assertEquals(pcm.length, header.getInt(40), "data size");
    assertArrayEquals(pcm, Arrays.copyOfRange(wav, Wav.HEADER_BYTES, wav.length), "samples");
  }

  private static long scale() {
    return (long) Math.ceil(Timing.TIME_SCALE);
  }

  /** Makes the emulator send audio at real-time pace, and restores its previous pace on close. */
  private static final class RealTimePace implements AutoCloseable {
    private final String previous;

    RealTimePace() throws Exception {
      Struct knobs = sidecar.knobs(Map.of());
      previous = knobValue(knobs, "realtime_factor");
      sidecar.knobs(Map.of("realtime_factor", "1.0"));
    }

    @Override
    public void close() throws Exception {
      sidecar.knobs(Map.of("realtime_factor", previous));
    }

    private static String knobValue(Struct knobs, String name) {
      var value = knobs.getFieldsOrThrow(name);
      return switch (value.getKindCase()) {
        case NUMBER_VALUE -> Double.toString(value.getNumberValue());
        case STRING_VALUE -> value.getStringValue();
        case BOOL_VALUE -> Boolean.toString(value.getBoolValue());
        default -> throw new AssertionError("knob " + name + " is " + value);
      };
    }
  }

  /** The channels forTarget builds send no PING as audio arrives (see FLOW_CONTROL_WINDOW). */
  @Test
  void forTargetTurnsOffBandwidthProbing() throws Exception {
    String text = "Audio arrives in many chunks for a text of several sentences. ".repeat(4);
    // The control: grpc-java's default channel tunes its window with a PING per burst of data.
    try (PingCountingProxy probing = new PingCountingProxy(sidecar.target())) {
      ManagedChannel channel =
          Grpc.newChannelBuilder(probing.target(), InsecureChannelCredentials.create()).build();
      try (SynthesizerClient client = new SynthesizerClient(channel)) {
        assertTrue(client.synthesizeAll(text, null).audio().length > 0);
      } finally {
        channel.shutdownNow();
      }
      assertTrue(probing.pings() > 0, "control: the default channel sent no PING; can't tell");
    }
    try (PingCountingProxy fixed = new PingCountingProxy(sidecar.target());
        SynthesizerClient client = SynthesizerClient.forTarget(fixed.target())) {
      assertTrue(client.synthesizeAll(text, null).audio().length > 0);
      assertEquals(0, fixed.pings(), "PINGs sent by the channel forTarget built");
    }
  }
}
