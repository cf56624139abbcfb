package dev.cosyvoice.sidecar.client;

import dev.cosyvoice.sidecar.v1.AudioChunk;
import dev.cosyvoice.sidecar.v1.Completed;
import dev.cosyvoice.sidecar.v1.FlushAcknowledged;
import dev.cosyvoice.sidecar.v1.SentenceTiming;
import dev.cosyvoice.sidecar.v1.Started;
import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import io.grpc.StatusRuntimeException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;

/**
 * A {@link SynthesisListener} that records every callback as the response it stands for, so tests
 * can check order and content after the call ended. Thread-safe.
 */
final class RecordingListener implements SynthesisListener {
  private final List<SynthesizeResponse> responses = new ArrayList<>();
  private final List<String> terminals = new ArrayList<>();
  private StatusRuntimeException error;
  /** Counts down at the first audio chunk. */
  final CountDownLatch firstAudio = new CountDownLatch(1);
  /** Counts down at the terminal callback (onCompleted or onError). */
  final CountDownLatch ended = new CountDownLatch(1);

  @Override
  public synchronized void onStarted(Started started) {
    responses.add(SynthesizeResponse.newBuilder().setStarted(started).build());
  }

  @Override
  public synchronized void onAudio(AudioChunk chunk) {
    responses.add(SynthesizeResponse.newBuilder().setAudio(chunk).build());
    firstAudio.countDown();
  }

  @Override
  public synchronized void onSentence(SentenceTiming sentence) {
    responses.add(SynthesizeResponse.newBuilder().setSentence(sentence).build());
  }

  @Override
  public synchronized void onFlushed(FlushAcknowledged flushed) {
    responses.add(SynthesizeResponse.newBuilder().setFlushed(flushed).build());
  }

  @Override
  public synchronized void onCompleted(Completed completed) {
    responses.add(SynthesizeResponse.newBuilder().setCompleted(completed).build());
    terminals.add("completed");
    ended.countDown();
  }

  @Override
  public synchronized void onError(StatusRuntimeException error) {
    this.error = error;
    terminals.add("error");
    ended.countDown();
  }

  synchronized List<SynthesizeResponse> responses() {
    return List.copyOf(responses);
  }

  /** The terminal callbacks seen; exactly one is expected. */
  synchronized List<String> terminals() {
    return List.copyOf(terminals);
  }

  synchronized StatusRuntimeException error() {
    return error;
  }
}
