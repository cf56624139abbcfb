package dev.cosyvoice.sidecar.examples;

import dev.cosyvoice.sidecar.client.StreamingSession;
import dev.cosyvoice.sidecar.client.SynthesisListener;
import dev.cosyvoice.sidecar.client.SynthesizerClient;
import dev.cosyvoice.sidecar.client.Wav;
import dev.cosyvoice.sidecar.v1.AudioChunk;
import dev.cosyvoice.sidecar.v1.AudioFormat;
import dev.cosyvoice.sidecar.v1.Completed;
import dev.cosyvoice.sidecar.v1.SynthesisConfig;
import io.grpc.StatusRuntimeException;
import java.io.ByteArrayOutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

/**
 * The streaming API in a few lines: text goes in as fragments (e.g. tokens from an LLM) while
 * audio comes back. The README's Java snippet is the code between the {@code README} markers, and
 * {@code QuickstartTest} runs it against a live sidecar.
 *
 * <pre>
 * mvn -q compile exec:java -Dexec.mainClass=dev.cosyvoice.sidecar.examples.Quickstart \
 *     -Dexec.args="127.0.0.1:50051 hello.wav"
 * </pre>
 */
public final class Quickstart {
  private Quickstart() {}

  /** Speak two fragments of text into {@code args[1]} (a WAV file) via the sidecar at args[0]. */
  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: Quickstart HOST:PORT OUT.wav");
      System.exit(2);
    }
    Completed completed = run(args[0], Path.of(args[1]));
    System.out.println("wrote " + args[1] + ": " + completed.getAudioBytes() + " bytes of PCM");
  }

  /** Stream two text fragments to the sidecar at {@code target} and write the speech to {@code out}. */
  public static Completed run(String target, Path out) throws Exception {
    // README:java:start
    try (SynthesizerClient client = SynthesizerClient.forTarget(target)) {
      SynthesisConfig config = SynthesisConfig.newBuilder()
          .setFormat(AudioFormat.AUDIO_FORMAT_PCM)
          .setSampleRateHz(24000)
          .build();
      ByteArrayOutputStream pcm = new ByteArrayOutputStream();
      StreamingSession session = client.streamingSynthesize(config, new SynthesisListener() {
        @Override
        public void onAudio(AudioChunk chunk) {
          pcm.writeBytes(chunk.getData().toByteArray()); // play it, or forward it, as it arrives
        }

        @Override
        public void onError(StatusRuntimeException error) {
          System.err.println("synthesis failed: " + error.getStatus());
        }
      });
      session.sendText("Hello from Java, ");
      session.sendText("streamed fragment by fragment.");
      session.finish();
      Completed completed = session.completion().get(30, TimeUnit.SECONDS);
      Files.write(out, Wav.wrapPcm16Mono(pcm.toByteArray(), 24000));
      // README:java:end
      return completed;
    }
  }
}
