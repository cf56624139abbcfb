package cosyvoice

import "encoding/binary"

// WAVHeaderSize is the size of the RIFF/WAVE header that [WAV] writes.
const WAVHeaderSize = 44

// WAV wraps raw AUDIO_FORMAT_PCM audio (16-bit signed little-endian mono
// samples) at sampleRateHz in a RIFF/WAVE container that any player opens.
func WAV(pcm []byte, sampleRateHz int) []byte {
	const channels, bitsPerSample = 1, 16
	blockAlign := channels * bitsPerSample / 8
	out := make([]byte, WAVHeaderSize, WAVHeaderSize+len(pcm))
	copy(out[0:], "RIFF")
	binary.LittleEndian.PutUint32(out[4:], uint32(36+len(pcm)))
	copy(out[8:], "WAVE")
	copy(out[12:], "fmt ")
	binary.LittleEndian.PutUint32(out[16:], 16) // size of the fmt chunk
	binary.LittleEndian.PutUint16(out[20:], 1)  // linear PCM
	binary.LittleEndian.PutUint16(out[22:], channels)
	binary.LittleEndian.PutUint32(out[24:], uint32(sampleRateHz))
	binary.LittleEndian.PutUint32(out[28:], uint32(sampleRateHz*blockAlign))
	binary.LittleEndian.PutUint16(out[32:], uint16(blockAlign))
	binary.LittleEndian.PutUint16(out[34:], bitsPerSample)
	copy(out[36:], "data")
	binary.LittleEndian.PutUint32(out[40:], uint32(len(pcm)))
	return append(out, pcm...)
}
