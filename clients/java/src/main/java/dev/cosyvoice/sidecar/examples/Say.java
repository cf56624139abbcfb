package dev.cosyvoice.sidecar.examples;

import dev.cosyvoice.sidecar.client.SynthesisResult;
import dev.cosyvoice.sidecar.client.SynthesizerClient;
import dev.cosyvoice.sidecar.v1.AudioFormat;
import dev.cosyvoice.sidecar.v1.SynthesisConfig;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * Speaks a text into an audio file through a running cosyvoice-sidecar.
 *
 * <pre>
 * mvn -q compile exec:java -Dexec.args="--target 127.0.0.1:50051 --out hello.wav Hello world"
 * </pre>
 *
 * <p>PCM (the sidecar's default) is written as a WAV file with a header built from the sample
 * rate the sidecar reports in {@code started}; WAV, MP3 and Opus are written as they arrive.
 */
public final class Say {
  private static final String USAGE =
      """
      usage: Say [--target HOST:PORT] [--out FILE] [--voice VOICE] [--model MODEL]
                 [--format pcm|wav|mp3|opus] [--sample-rate HZ] TEXT...
        --target       the sidecar's gRPC address (default 127.0.0.1:50051)
        --out          the audio file to write (default say.wav)
        --format       pcm is written as WAV; default: the sidecar's default format
      """;

  private Say() {}

  /** Run {@link #run} and exit with its status. */
  public static void main(String[] args) {
    System.exit(run(args, System.out, System.err));
  }

  /**
   * Synthesize the text of {@code args} into a file and return the exit status: 0 on success, 1
   * when the call failed, 2 for bad arguments.
   */
  public static int run(String[] args, PrintStream out, PrintStream err) {
    String target = "127.0.0.1:50051";
    Path output = Path.of("say.wav");
    SynthesisConfig.Builder config = SynthesisConfig.newBuilder();
    List<String> words = new ArrayList<>();
    try {
      for (int i = 0; i < args.length; i++) {
        String arg = args[i];
        switch (arg) {
          case "--target" -> target = value(args, ++i, arg);
          case "--out" -> output = Path.of(value(args, ++i, arg));
          case "--voice" -> config.setVoice(value(args, ++i, arg));
          case "--model" -> config.setModel(value(args, ++i, arg));
          case "--format" -> config.setFormat(format(value(args, ++i, arg)));
          case "--sample-rate" -> config.setSampleRateHz(Integer.parseInt(value(args, ++i, arg)));
          case "-h", "--help" -> {
            out.print(USAGE);
            return 0;
          }
          default -> {
            if (arg.startsWith("--")) {
              throw new IllegalArgumentException("unknown flag: " + arg);
            }
            words.add(arg);
          }
        }
      }
      if (words.isEmpty()) {
        throw new IllegalArgumentException("no text given");
      }
    } catch (IllegalArgumentException e) {
      err.println("error: " + e.getMessage());
      err.print(USAGE);
      return 2;
    }

    try (SynthesizerClient client = SynthesizerClient.forTarget(target)) {
      SynthesisResult result = client.synthesizeAll(String.join(" ", words), config.build());
      AudioFormat format = result.started().getFormat();
      boolean wav = format == AudioFormat.AUDIO_FORMAT_PCM || format == AudioFormat.AUDIO_FORMAT_WAV;
      Files.write(output, wav ? result.toWav() : result.audio());
      out.printf(
          "wrote %s: %d bytes of %s audio, %.0f ms, %d Hz, voice %s, task %s%n",
          output,
          result.audio().length,
          format,
          result.completed().getAudioDurationMs(),
          result.started().getSampleRateHz(),
          result.started().getVoice(),
          result.started().getTaskId());
      return 0;
    } catch (StatusRuntimeException e) {
      err.println("error: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
      return 1;
    } catch (IOException e) {
      err.println("error: cannot write " + output + ": " + e.getMessage());
      return 1;
    }
  }

  private static String value(String[] args, int i, String flag) {
    if (i >= args.length) {
      throw new IllegalArgumentException(flag + " needs a value");
    }
    return args[i];
  }

  private static AudioFormat format(String name) {
    return switch (name.toLowerCase(Locale.ROOT)) {
      case "pcm" -> AudioFormat.AUDIO_FORMAT_PCM;
      case "wav" -> AudioFormat.AUDIO_FORMAT_WAV;
      case "mp3" -> AudioFormat.AUDIO_FORMAT_MP3;
      case "opus" -> AudioFormat.AUDIO_FORMAT_OPUS;
      default -> throw new IllegalArgumentException("unknown format: " + name);
    };
  }
}
