package dev.cosyvoice.sidecar.client;

import dev.cosyvoice.sidecar.v1.AudioFormat;
import dev.cosyvoice.sidecar.v1.Completed;
import dev.cosyvoice.sidecar.v1.SentenceTiming;
import dev.cosyvoice.sidecar.v1.Started;
import java.util.List;

/**
 * A complete synthesis: what {@link SynthesizerClient#synthesizeAll} returns.
 *
 * <p>{@code audio} is the concatenation of every audio chunk in order, exactly the bytes the
 * upstream produced, in the format named by {@code started.getFormat()}. Being an array, it takes
 * part in {@link #equals} by identity; compare audio with {@link java.util.Arrays#equals}.
 *
 * @param started the first response: task id, resolved format, sample rate, model and voice
 * @param audio every audio byte of the call, in order
 * @param sentences the sentence timings, in order
 * @param completed the last response: billed characters and totals
 */
public record SynthesisResult(
    Started started, byte[] audio, List<SentenceTiming> sentences, Completed completed) {

  /** Defensive copy of the sentences; the audio array is handed over, not copied. */
  public SynthesisResult {
    sentences = List.copyOf(sentences);
  }

  /**
   * Return the audio as a playable WAV file: PCM gets a RIFF/WAVE header for 16-bit mono samples
   * at {@code started.getSampleRateHz()}, WAV is returned as it is.
   *
   * @throws IllegalStateException when the audio is MP3 or Opus, which WAV cannot hold
   */
  public byte[] toWav() {
    AudioFormat format = started.getFormat();
    return switch (format) {
      case AUDIO_FORMAT_PCM -> Wav.wrapPcm16Mono(audio, started.getSampleRateHz());
      case AUDIO_FORMAT_WAV -> audio;
      default -> throw new IllegalStateException(format + " audio cannot be stored as WAV");
    };
  }
}
