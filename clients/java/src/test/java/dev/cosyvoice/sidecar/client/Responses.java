package dev.cosyvoice.sidecar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Struct;
import dev.cosyvoice.sidecar.v1.Started;
import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.List;

/** Assertions on response streams and on the audio the emulator produced upstream. */
final class Responses {
  private Responses() {}

  /**
   * Assert the order synthesizer.proto promises (one started first, gapless audio sequence numbers
   * from 0, one completed last, its totals matching) and return the concatenated audio.
   */
  static byte[] assertOrderedAudio(List<SynthesizeResponse> responses) {
    assertTrue(responses.size() >= 2, "too few responses: " + responses);
    assertTrue(responses.get(0).hasStarted(), "first response is not started: " + responses.get(0));
    SynthesizeResponse last = responses.get(responses.size() - 1);
    assertTrue(last.hasCompleted(), "last response is not completed: " + last);
    ByteArrayOutputStream audio = new ByteArrayOutputStream();
    long sequence = 0;
    for (SynthesizeResponse response : responses.subList(1, responses.size() - 1)) {
      assertTrue(!response.hasStarted() && !response.hasCompleted(), "misplaced " + response);
      if (response.hasAudio()) {
        assertEquals(sequence, response.getAudio().getSequence(), "audio sequence number");
        sequence++;
        audio.writeBytes(response.getAudio().getData().toByteArray());
      }
    }
    assertTrue(sequence > 0, "no audio in " + responses.size() + " responses");
    assertEquals(sequence, last.getCompleted().getAudioChunks(), "completed.audio_chunks");
    assertEquals(audio.size(), last.getCompleted().getAudioBytes(), "completed.audio_bytes");
    return audio.toByteArray();
  }

  /**
   * Assert that {@code audio} is byte for byte what the emulator sent for the task of {@code
   * started}, which finished cleanly; return the emulator's task record.
   */
  static Struct assertUpstreamAudio(Sidecar sidecar, Started started, byte[] audio)
      throws IOException, InterruptedException {
    assertTrue(!started.getTaskId().isEmpty(), "started.task_id is empty");
    Struct task = sidecar.awaitTaskOutcome(started.getTaskId(), Timing.scaled(5), "finished");
    assertEquals(
        (long) task.getFieldsOrThrow("audio_bytes").getNumberValue(),
        audio.length,
        "audio length: received vs. emulator's audio_bytes");
    assertEquals(
        task.getFieldsOrThrow("audio_sha256").getStringValue(),
        sha256(audio),
        "audio sha256: received vs. emulator's audio_sha256");
    return task;
  }

  /** Return the lowercase hex SHA-256 of {@code data}. */
  static String sha256(byte[] data) {
    try {
      return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    } catch (NoSuchAlgorithmException e) {
      throw new AssertionError("every JVM has SHA-256", e);
    }
  }
}
